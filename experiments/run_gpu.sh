#!/usr/bin/env bash
# The whole GSM8K comparison on one GPU: the learning-rate sweep (a grid, then up to EXTEND (default 2) rounds of one
# more lr past a best range end), then 3 seeds of every method at its chosen lr.
#
#   experiments/run_gpu.sh SmolLM2-135M-Instruct.Q4_1.gguf ../shared/data/gsm8k [OUT]
#
# OUT defaults to experiments/results. JOBS (default 3) runs share the GPU at a time; a stage whose runs failed (for
# instance out of GPU memory while sharing) is retried with 2, then 1 at a time; runs already in OUT are skipped, so the
# script also resumes. Needs lowrank_jax's requirements. About an hour of one H100 (docs/experiments.md).
set -euo pipefail
model=${1:?usage: experiments/run_gpu.sh MODEL.gguf GSM8K_DIR [OUT]}
gsm8k=${2:?usage: experiments/run_gpu.sh MODEL.gguf GSM8K_DIR [OUT]}
out=${3:-experiments/results}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/lowrank_jax/jax}
stages=(sweep)
for _ in $(seq "${EXTEND:-2}"); do stages+=("sweep --extend-edges"); done
stages+=(final)
for stage in "${stages[@]}"; do
  for jobs in "${JOBS:-3}" 2 1 fail; do
    [ "$jobs" = fail ] && { echo "$stage: runs still fail one at a time; see their .log files in $out"; exit 1; }
    # shellcheck disable=SC2086  # $stage is the stage and its flags
    python -m experiments.gsm8k_comparison $stage --model "$model" --gsm8k "$gsm8k" --out "$out" --jobs "$jobs" && break
  done
done
python experiments/summarize.py "$out"
