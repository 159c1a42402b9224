"""LoRA-GA's gradient estimate: the mean loss gradient of each target kernel over a few batches, one module at a time.

`estimate_gradients` returns a lazy mapping that `adapt(model, config, gradients=...)` reads: each module's gradient
is computed when it is read (one jitted backward pass per batch, differentiating that kernel only), so a model never
holds more than one module's gradient (for a stacked model: one projection across all layers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.config import AdapterConfig
from lowrank_jax.adapters.module_paths import dotted, iter_module_paths
from lowrank_jax.adapters.targets import ADAPTABLE


class LayerGradients(Mapping):
    """{module path: mean over `batches` of ∂loss_fn/∂kernel (float32, the kernel's shape)}, computed on access.

    Reading an entry twice computes it twice; `dict(gradients)` computes and keeps all of them.
    """

    def __init__(self, model: nnx.Module, loss_fn: Callable, batches: Sequence, paths: dict[str, tuple]):
        self._model, self._loss_fn, self._batches, self._paths = model, loss_fn, batches, paths

    def __getitem__(self, name: str) -> jax.Array:
        kernel_path = (*self._paths[name], "kernel")
        graphdef, kernel, rest = nnx.split(self._model, lambda path, _: tuple(path) == kernel_path, ...)
        # Pure arrays in, so that merge builds fresh Variables inside the grad trace (a model that updates its own
        # variables while running, e.g. a scanned one, may then do so).
        kernel, rest = nnx.as_pure(kernel), nnx.as_pure(rest)

        @jax.jit
        def gradient(kernel, rest, batch):
            return jax.grad(lambda k: self._loss_fn(nnx.merge(graphdef, k, rest), batch))(kernel)

        total = None
        for batch in self._batches:
            (leaf,) = jax.tree.leaves(gradient(kernel, rest, batch))
            total = leaf.astype(jnp.float32) if total is None else total + leaf.astype(jnp.float32)
        return total / len(self._batches)

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def estimate_gradients(model: nnx.Module, loss_fn: Callable[[nnx.Module, object], jax.Array], batches: Sequence,
                       targets) -> LayerGradients:
    """The loss gradients of the kernels LoRA-GA initialises from, for `adapt(model, config, gradients=...)`.

    Args:
        model: the model before `adapt` (its pretrained weights are where the gradient is taken).
        loss_fn: `loss_fn(model, batch) -> scalar` (e.g. the mean next-token loss of a batch); called under jit.
        batches: a sequence (a list, not an iterator: it is read once per module) of batches; the paper and the
            authors use a few dozen samples.
        targets: a regex or sequence of regexes fullmatching module paths, as `AdapterConfig.targets`.

    Returns:
        A `LayerGradients` mapping with one entry per matching `nnx.Linear` / `LinearGeneral` / `Einsum`.

    Raises:
        ValueError: `batches` is empty or not a sequence, or `targets` matches no linear layer.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> class Tiny(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.q_proj = nnx.Linear(4, 4, use_bias=False, rngs=rngs)
        >>> def loss_fn(model, x):
        ...     return jnp.sum(model.q_proj(x))
        >>> gradients = estimate_gradients(Tiny(nnx.Rngs(0)), loss_fn, [jnp.ones((2, 4))], "q_proj")
        >>> gradients["q_proj"]  # ∂/∂K of Σ x K = Σ_rows x (each entry 2)
        Array([[2., 2., 2., 2.],
               [2., 2., 2., 2.],
               [2., 2., 2., 2.],
               [2., 2., 2., 2.]], dtype=float32)
    """
    if not isinstance(batches, Sequence) or not batches:
        raise ValueError(f"batches must be a non-empty list of batches (it is read once per module), got "
                         f"{type(batches).__name__}; pass e.g. [next(iterator) for _ in range(8)].")
    matcher = AdapterConfig(targets=targets)
    paths = {dotted(path): path for path, module in iter_module_paths(model)
             if isinstance(module, ADAPTABLE) and matcher.targets_match(dotted(path))}
    if not paths:
        raise ValueError(f"targets {targets!r} match no nnx.Linear / LinearGeneral / Einsum (the pattern must "
                         "fullmatch a dotted module path).")
    return LayerGradients(model, loss_fn, batches, paths)
