#!/usr/bin/env bash
# The whole GSM8K comparison on one GPU: the learning-rate sweep, then 3 seeds of every method at its chosen lr.
#
#   experiments/run_gpu.sh SmolLM2-135M-Instruct.Q4_1.gguf ../shared/data/gsm8k [OUT]
#
# OUT defaults to experiments/results. JOBS (default 6) runs share the GPU at a time; a stage whose runs failed (for
# instance out of GPU memory while sharing) is retried with 2 at a time; runs already in OUT are skipped, so the
# script also resumes. Needs lowrank_jax's requirements. Took about 20 minutes on one H100 (docs/experiments.md).
set -euo pipefail
model=${1:?usage: experiments/run_gpu.sh MODEL.gguf GSM8K_DIR [OUT]}
gsm8k=${2:?usage: experiments/run_gpu.sh MODEL.gguf GSM8K_DIR [OUT]}
out=${3:-experiments/results}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/lowrank_jax/jax}
for stage in sweep final; do
  python -m experiments.gsm8k_comparison "$stage" --model "$model" --gsm8k "$gsm8k" --out "$out" --jobs "${JOBS:-6}" \
    || python -m experiments.gsm8k_comparison "$stage" --model "$model" --gsm8k "$gsm8k" --out "$out" --jobs 2
done
python experiments/summarize.py "$out"
