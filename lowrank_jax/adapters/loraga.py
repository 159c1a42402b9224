"""LoRA-GA's gradient estimate: the mean loss gradient of each target kernel over a few batches, a group of modules at
a time.

`estimate_gradients` returns a lazy mapping that `adapt(model, config, gradients=...)` reads: a module's gradient is
computed when it is read, together with the rest of its group (modules in path order up to `group_bytes`; one
jitted backward pass per batch differentiating only those kernels), so the full gradient tree never exists.
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

    Modules are grouped in path order up to `group_bytes` of float32 gradient per group (a larger module is a group
    of its own); reading a module computes its whole group (one jitted backward pass per batch, differentiating
    only the group's kernels) and keeps the group's other gradients until they are read once. Reading in path order,
    as `adapt` does, so holds at most one group. `dict(gradients)` computes and keeps all of them.
    """

    def __init__(self, model: nnx.Module, loss_fn: Callable, batches: Sequence,
                 modules: dict[str, tuple[tuple, nnx.Module]], group_bytes: int):
        self._model, self._loss_fn, self._batches = model, loss_fn, batches
        self._paths = {name: path for name, (path, _) in modules.items()}
        self._groups: list[list[str]] = []
        size = group_bytes
        for name, (_, module) in modules.items():
            kernel_bytes = 4 * module.kernel.size
            if size + kernel_bytes > group_bytes:
                self._groups.append([])
                size = 0
            self._groups[-1].append(name)
            size += kernel_bytes
        self._pending: dict[str, jax.Array] = {}

    def __getitem__(self, name: str) -> jax.Array:
        if name not in self._pending:
            group = next(group for group in self._groups if name in group)
            self._pending = self._group_gradients(group)
        return self._pending.pop(name)

    def _group_gradients(self, group: list[str]) -> dict[str, jax.Array]:
        kernel_paths = {(*self._paths[name], "kernel"): name for name in group}
        graphdef, kernels, rest = nnx.split(self._model, lambda path, _: tuple(path) in kernel_paths, ...)
        # Pure arrays in, so that merge builds fresh Variables inside the grad trace (a model that updates its own
        # variables while running, e.g. a scanned one, may then do so).
        kernels, rest = nnx.as_pure(kernels), nnx.as_pure(rest)

        @jax.jit
        def gradient(kernels, rest, batch):
            return jax.grad(lambda k: self._loss_fn(nnx.merge(graphdef, k, rest), batch))(kernels)

        total = None
        for batch in self._batches:
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), gradient(kernels, rest, batch))
            total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        return {kernel_paths[tuple(path)]: value / len(self._batches) for path, value in nnx.to_flat_state(total)}

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def estimate_gradients(model: nnx.Module, loss_fn: Callable[[nnx.Module, object], jax.Array], batches: Sequence,
                       targets, *, group_bytes: int = 4 * 2**30) -> LayerGradients:
    """The loss gradients of the kernels LoRA-GA initialises from, for `adapt(model, config, gradients=...)`.

    Args:
        model: the model before `adapt` (its pretrained weights are where the gradient is taken).
        loss_fn: `loss_fn(model, batch) -> scalar` (e.g. the mean next-token loss of a batch); called under jit.
        batches: a sequence (a list, not an iterator: it is read once per module) of batches; the paper and the
            authors use a few dozen samples.
        targets: a regex or sequence of regexes fullmatching module paths, as `AdapterConfig.targets`.
        group_bytes: float32 gradient bytes computed per pass (modules grouped in path order; a larger module is a
            group of its own). Fewer, larger groups mean fewer compilations and passes (an unscanned 7B Llama has
            224 target modules, about 7 groups of 4 GiB) at the cost of memory.

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
    modules = {dotted(path): (path, module) for path, module in iter_module_paths(model)
               if isinstance(module, ADAPTABLE) and matcher.targets_match(dotted(path))}
    if not modules:
        raise ValueError(f"targets {targets!r} match no nnx.Linear / LinearGeneral / Einsum (the pattern must "
                         "fullmatch a dotted module path).")
    if group_bytes <= 0:
        raise ValueError(f"group_bytes must be positive, got {group_bytes}.")
    return LayerGradients(model, loss_fn, batches, modules, group_bytes)
