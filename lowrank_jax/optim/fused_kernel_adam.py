"""lorapro_adamw's kernel-space Adam step in one pass over the moments (a Pallas kernel).

Per adapter the unfused step writes the equivalent gradient g̃ (in, out), reads it with the two moments, writes
the moments and the direction U (in, out), then reads U twice for the pull-back U bᵀ and aᵀ U: about 36 bytes per
base weight with float32 moments. Here each (in, out) tile forms g̃ = left @ right from the low-rank factors in
registers, updates the moments in place and contracts U with b and a at once, so the moments are read and written
once (16 bytes per weight) and g̃ and U never reach memory. Tiles' partial U bᵀ and aᵀ U are summed afterwards.

On GPUs the kernel compiles through Triton; on CPUs it runs interpreted (for tests: slow, same numbers).
On one H200 the default tiles take 47.5 ms for the 224 adapters of a 7B shape (float32 moments) against 63.7 ms
for XLA's unfused step (docs/benchmarks.md, LoRA-Pro's update alone); in the 7B train step at 32 × 512 tokens with
bf16 moments, on one H100, it costs 4.2% over LoRA's step against 6.0% unfused. It is opt-in: it runs on one GPU only.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

DOT_MIN = 16  # Triton's smallest matmul dimension: k and r are zero-padded up to multiples of it
# How the kernel's three float32 matmuls run on a GPU: 'ieee' on the CUDA cores (fused multiply-adds, float32), the
# others on the tensor cores in several passes over split operands: tf32x3 (two TF32 parts, three products) and
# bf16x6 (three bfloat16 parts, six products) come close to float32's precision, bf16x3 (two parts) to about 16 bits.
# Interpreted on CPUs every one computes in float32.
DOTS = {"ieee": jax.lax.Precision.HIGHEST, "tf32x3": jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
        "bf16x3": jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3, "bf16x6": jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X6}


class Tiles(NamedTuple):
    """How the kernel splits the (in, out) space: one program per (rows, cols) tile, run by `warps` × 32 threads,
    and how its matmuls run (`dot`, one of DOTS).

    Each program holds its tile's g̃, m, v and U in registers (4 × rows × cols floats over warps × 32 threads), so
    the tile size and the warps trade registers against parallelism. At 64 floats of a tile per thread (128 × 128
    tiles, 8 warps) ptxas spills registers to local memory (0.6 to 5.3 KB per thread, by ptxas release); the default
    (32 × 64, 4 warps) holds 16 per thread in 80 registers (`python -m bench.fused_kernel_registers`), the fastest of
    seven tilings timed on one H200. Sweep them on the GPU at hand with
    `python -m bench.lorapro_update --fused-tiles 32x64w4,64x64w4,32x64w4:tf32x3,...`.
    """

    rows: int = 32
    cols: int = 64
    warps: int = 4
    dot: str = "ieee"

    @classmethod
    def parse(cls, text: str) -> "Tiles":
        """'ROWSxCOLSwWARPS[:DOT]' -> Tiles.

        >>> Tiles.parse("64x128w4"), Tiles.parse("32x64w4:tf32x3").dot
        (Tiles(rows=64, cols=128, warps=4, dot='ieee'), 'tf32x3')
        """
        try:
            layout, _, dot = text.partition(":")
            shape, warps = layout.split("w")
            rows, cols = shape.split("x")
            return cls(int(rows), int(cols), int(warps), dot or "ieee").checked()
        except ValueError as error:
            raise ValueError(f"tiles {text!r}: write ROWSxCOLSwWARPS[:DOT], e.g. 64x128w8 or 64x128w8:tf32x3 "
                             f"({error})") from None

    def checked(self) -> "Tiles":
        """Itself, or ValueError when Triton cannot take it (powers of two; sides of at least 16; a known dot)."""
        power_of_two = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
        if not (power_of_two(self.rows) and power_of_two(self.cols) and self.rows >= DOT_MIN and self.cols >= DOT_MIN
                and power_of_two(self.warps) and self.warps <= 32 and self.dot in DOTS):
            raise ValueError(f"{self}: rows and cols must be powers of two of at least {DOT_MIN}, warps a power of "
                             f"two up to 32, dot one of {tuple(DOTS)}")
        return self

    def __str__(self) -> str:
        """The form `parse` reads: '64x128w8', '64x128w8:tf32x3'."""
        return f"{self.rows}x{self.cols}w{self.warps}" + (f":{self.dot}" if self.dot != "ieee" else "")


def fits_fused_kernel(in_dim: int, out_dim: int, tiles: Tiles = Tiles()) -> bool:
    """Whether an (in, out) kernel splits into whole tiles (else the unfused step runs).

    >>> fits_fused_kernel(4096, 14336), fits_fused_kernel(4096, 100), fits_fused_kernel(64, 64, Tiles(64, 32))
    (True, False, True)
    """
    return in_dim % tiles.rows == 0 and out_dim % tiles.cols == 0


def check_fused_kernel_devices() -> None:
    """Refuses several GPUs (the kernel would gather moments sharded over them) and other platforms."""
    backend = jax.default_backend()
    if backend not in ("gpu", "cpu") or (backend == "gpu" and jax.device_count() > 1):
        raise ValueError(
            f"lorapro_adamw(fused_update=True) runs on one GPU (or CPUs, interpreted); this process sees "
            f"{jax.device_count()} {backend} device(s). Leave fused_update=False there: on a mesh of GPUs the "
            "kernel would gather the sharded moments, while the unfused step keeps them sharded.")


def _pad(x: jax.Array, axis: int) -> jax.Array:
    extra = -x.shape[axis] % DOT_MIN
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def kernel_adam_pullback(left, right, a, b, mu, nu, bias, *, b1: float, b2: float, eps: float,
                         tiles: Tiles = Tiles(), interpret: bool | None = None, debug: bool = False):
    """Adam on g̃ = left @ right and the pull-back of its direction, in one pass over the moments.

    m ← b1·m + (1−b1)·g̃;  v ← b2·v + (1−b2)·g̃²;  U = (m / bias[0]) / (√(v / bias[1]) + eps), then U bᵀ and aᵀ U,
    as lorapro_adamw's unfused step (float32 arithmetic; the matmuls as `tiles.dot` says, all float32 on CPUs).

    Args:
      left: (in, k), right: (k, out), float32: the equivalent gradient's factors (the scale folded in).
      a: (in, r), b: (r, out): the adapter's lora_a and lora_b (a three-factor adapter's lora_m is applied to the
        results by the caller, as adapter_step.pulled_gradients does).
      mu, nu: (in, out) moments, any float dtype; returned in the same dtype.
      bias: (2,) float32, Adam's bias corrections 1 − b1ᵗ and 1 − b2ᵗ.
      b1, b2, eps: Adam's constants.
      tiles: the tile shape, warps and matmul precision (Tiles).
      interpret: run the kernel interpreted (None: on CPUs only).
      debug: print the kernel's jaxpr and, lowered for a GPU, its Triton IR (Pallas's `debug`).

    Returns:
      (mu, nu, u_bt (in, r), at_u (r, out)); u_bt and at_u in float32.

    Example:
      >>> left, right, a, b = jnp.ones((128, 16)), jnp.ones((16, 128)), jnp.ones((128, 8)), jnp.ones((8, 128))
      >>> mu, nu, u_bt, at_u = kernel_adam_pullback(left, right, a, b, jnp.zeros((128, 128)),
      ...     jnp.zeros((128, 128)), jnp.asarray([0.1, 0.001]), b1=0.9, b2=0.999, eps=1e-8)
      >>> u_bt.shape, at_u.shape, bool(jnp.allclose(at_u, 128.0))   # first step: U = g̃ / |g̃| = 1
      ((128, 8), (8, 128), True)
    """
    from jax.experimental import pallas as pl  # here, not at import: the fused step is opt-in
    from jax.experimental.pallas import triton as plgpu

    (in_dim, out_dim), rank = mu.shape, a.shape[-1]
    if not fits_fused_kernel(in_dim, out_dim, tiles):
        raise ValueError(f"the fused LoRA-Pro step needs (in, out) divisible by ({tiles.rows}, {tiles.cols}); got "
                         f"{mu.shape}.")
    left, right = _pad(left.astype(jnp.float32), 1), _pad(right.astype(jnp.float32), 0)
    a_t, b_t = _pad(a.astype(jnp.float32).T, 0), _pad(b.astype(jnp.float32).T, 1)  # (r', in), (out, r')
    k, r = left.shape[1], a_t.shape[0]
    rows, cols = tiles.rows, tiles.cols
    grid = (in_dim // rows, out_dim // cols)
    interpret = jax.default_backend() == "cpu" if interpret is None else interpret
    precision = DOTS["ieee" if interpret else tiles.dot]

    def tile_step(bias_ref, left_ref, right_ref, a_t_ref, b_t_ref, mu_ref, nu_ref, mu_out, nu_out, u_bt_out,
                  at_u_out):
        g = jnp.dot(left_ref[...], right_ref[...], precision=precision)
        m = b1 * mu_ref[...].astype(jnp.float32) + (1 - b1) * g
        v = b2 * nu_ref[...].astype(jnp.float32) + (1 - b2) * jnp.square(g)
        u = (m / bias_ref[0]) / (jnp.sqrt(v / bias_ref[1]) + eps)
        mu_out[...] = m.astype(mu_out.dtype)
        nu_out[...] = v.astype(nu_out.dtype)
        u_bt_out[...] = jnp.dot(u, b_t_ref[...], precision=precision)
        at_u_out[...] = jnp.dot(a_t_ref[...], u, precision=precision)

    tile = lambda i, j: (i, j)  # noqa: E731
    mu, nu, u_bt, at_u = pl.pallas_call(
        tile_step,
        grid=grid,
        in_specs=[pl.BlockSpec((2,), lambda i, j: (0,)),
                  pl.BlockSpec((rows, k), lambda i, j: (i, 0)),
                  pl.BlockSpec((k, cols), lambda i, j: (0, j)),
                  pl.BlockSpec((r, rows), lambda i, j: (0, i)),
                  pl.BlockSpec((cols, r), lambda i, j: (j, 0)),
                  pl.BlockSpec((rows, cols), tile),
                  pl.BlockSpec((rows, cols), tile)],
        out_specs=[pl.BlockSpec((rows, cols), tile),
                   pl.BlockSpec((rows, cols), tile),
                   pl.BlockSpec((pl.squeezed, rows, r), lambda i, j: (j, i, 0)),
                   pl.BlockSpec((pl.squeezed, r, cols), lambda i, j: (i, 0, j))],
        out_shape=[jax.ShapeDtypeStruct(mu.shape, mu.dtype),
                   jax.ShapeDtypeStruct(nu.shape, nu.dtype),
                   jax.ShapeDtypeStruct((grid[1], in_dim, r), jnp.float32),  # one partial U bᵀ per column tile
                   jax.ShapeDtypeStruct((grid[0], r, out_dim), jnp.float32)],  # one partial aᵀ U per row tile
        input_output_aliases={5: 0, 6: 1},  # the moments are updated in place
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=tiles.warps),
        name="lorapro_kernel_adam",
        debug=debug,
    )(jnp.asarray(bias, jnp.float32), left, right, a_t, b_t, mu, nu)
    return mu, nu, u_bt.sum(0)[:, :rank], at_u.sum(0)[:rank, :]
