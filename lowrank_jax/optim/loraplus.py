"""`loraplus(ratio)`: LoRA+ (Hayou et al. 2024, arXiv 2402.12354), B's learning rate λ× A's, as an Optax transform
that follows any optimizer: optax.chain(optax.adamw(lr), loraplus(16.0)).
"""

import math

import optax

from lowrank_jax.optim.adapter_tree import flatten, path_str, value_of, with_value

B_FACTOR = "lora_b"


def _check_has_b(flat: list, what: str) -> None:
    """Raise unless the flattened tree has a lora_b leaf."""
    if not any(path and path[-1] == B_FACTOR for path, _ in flat):
        paths = [path_str(path) for path, _ in flat][:6]
        raise ValueError(
            f"loraplus() found no {B_FACTOR} leaf in the {what} (leaves: {paths}). LoRA+ scales the updates of "
            "trainable lora_b factors: use it on the adapter factors (e.g. nnx.state(model, nnx.LoRAParam)) of a "
            "method whose B trains, or leave it out."
        )


def loraplus(ratio: float = 16.0) -> optax.GradientTransformation:
    """LoRA+: every ``lora_b`` update multiplied by ``ratio`` = λ, so B moves with λ× the learning rate of A.

    Put it last, after the whole optimizer (and after ``lorapro()`` when that is used): the optimizer's update of
    B, −lr·(direction + wd·B) for AdamW, becomes −λ·lr·(direction + wd·B), which is that optimizer run with B's
    learning rate λ·lr (decoupled weight decay scales with it, as a per-group learning rate does in PyTorch).
    Every other leaf — ``lora_a``, ``lora_m``, DoRA's ``lora_magnitude``, anything not an adapter — is untouched.
    A leaf is a B factor when its last path key is ``lora_b`` (dicts and nnx.State, Variables or arrays, any
    stack axes), the name ``lowrank_jax.optim`` uses everywhere. Stateless; works under jit.

    PEFT's ``create_loraplus_optimizer`` (after the authors' code) also gives every 1-D trainable parameter
    (biases, DoRA's magnitude) B's learning rate; this transform scales B only. Chained after LoRA-Pro it still
    scales B's final update, so the step is no longer LoRA-Pro's projection of the full-weight step (its first-order
    change becomes s(dA B + λ A dB)).

    Args:
      ratio: λ = lr_B / lr_A, a positive number (the paper's recommendation for LLaMA-scale models: 16).

    Returns:
      An optax.GradientTransformation with an EmptyState. ``init`` and ``update`` raise a ValueError when the tree
      holds no ``lora_b`` leaf (IntTune, full fine-tuning: nothing for LoRA+ to scale).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"q": {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.zeros((2, 3))}}
      >>> grads = {"q": {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.ones((2, 3))}}
      >>> tx = optax.chain(optax.sgd(0.1), loraplus(16.0))
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["q"]["lora_a"][0, 0], updates["q"]["lora_b"][0, 0]
      (Array(-0.1, dtype=float32), Array(-1.6, dtype=float32))
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"loraplus ratio must be a positive number (λ = lr_B / lr_A, LoRA+ uses 16), got {ratio!r}.")

    def init(params):
        _check_has_b(flatten(params)[0], "params")
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        flat, treedef = flatten(updates)
        _check_has_b(flat, "updates")
        leaves = [with_value(leaf, value_of(leaf) * ratio) if path and path[-1] == B_FACTOR else leaf
                  for path, leaf in flat]
        return treedef.unflatten(leaves), state

    return optax.GradientTransformation(init, update)


def with_loraplus(optimizer: optax.GradientTransformation, ratio: float | None) -> optax.GradientTransformation:
    """``optimizer`` followed by ``loraplus(ratio)``, or ``optimizer`` itself when ``ratio`` is None (LoRA+ off).

    What a config's ``optimizer.loraplus_ratio`` turns into; works for any optimizer, LoRA-Pro's included.

    Example:
      >>> tx = with_loraplus(optax.sgd(0.1), None)
      >>> isinstance(with_loraplus(tx, 16.0), optax.GradientTransformation)
      True
    """
    return optimizer if ratio is None else optax.chain(optimizer, loraplus(ratio))
