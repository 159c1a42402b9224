#!/usr/bin/env bash
# The benchmark table of docs/benchmarks.md on one GPU: JSON files into OUTDIR, then the markdown tables (bench/report.py).
#
#   bench/run_gpu.sh OUTDIR               all parts, most important first; no part starts after BUDGET_S seconds
#                                         (default 480), and the skipped ones are printed with their command
#   bench/run_gpu.sh OUTDIR gen seq1024   only the named parts
#   bench/run_gpu.sh OUTDIR quick         headline rows only: 7B LoRA r=8 ours vs PEFT, 7B LoRA-Pro AdamW fp32 memory
#
# Parts: headline (7B LoRA r=8, ours and PEFT), jax7b (every other method at 7B), jax1b (every method at 1B,
# full fine-tuning included), peft (PEFT LoRA r=128 at 7B; LoRA r=8, r=128, full at 1B), gen (batched greedy
# decoding, ours vs transformers), seq1024 (7B LoRA r=8 at sequence 1024, ours and PEFT), peftcompile (headline
# PEFT row with torch.compile) and profile (where the 7B LoRA step's GPU time goes); the last two are not in the
# default list.
# Settings: BATCH_7B (8), BATCH_1B (8), BUDGET_S (480), REMAT (full), ATTENTION (cudnn); TINY=1 runs every part
# with tiny shapes on the CPU (a check of this script, minutes).
# Needs lowrank_jax's requirements importable (ml-collections and gguf on top of the GPU image), torch + peft.
set -euo pipefail
out=${1:?usage: bench/run_gpu.sh OUTDIR [PART ...]}
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(headline jax7b jax1b peft gen seq1024)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
python -c "import lowrank_jax.training.optimizer, configs.common, torch, transformers, peft" \
  || { echo "missing packages: install lowrank_jax's requirements (ml-collections, gguf) and torch, peft"; exit 1; }

b7=${BATCH_7B:-8}
b1=${BATCH_1B:-8}
deadline=$(( $(date +%s) + ${BUDGET_S:-480} ))
tiny=${TINY:+--tiny}
jax="python -m bench.train_step --remat ${REMAT:-full} --attention ${ATTENTION:-cudnn} --deadline $deadline $tiny"
peft="python -m bench.peft_step --deadline $deadline $tiny"
steps7b="--steps 3 --warmup 1"   # ~1.5-3 s per 7B step; compilation and start-up dominate anyway
steps1b="--steps 5 --warmup 1"
adapters7b=lora-r128,nlora-r128,inttune-r128,lorapro-r8,lorapro_adamw-r8-bf16,lorapro_adamw-r8-fp32,dora-r8,loraplus-r8,loraga-r8
methods1b=lora-r8,lora-r128,nlora-r128,inttune-r128,lorapro-r8,lorapro_adamw-r8-bf16,full

run_part() {
  case $1 in
    quick)
      $jax --models 7b --methods lora-r8,lorapro_adamw-r8-fp32 --batch "$b7" $steps7b --out "$out/quick_jax.json"
      $peft --models 7b --methods lora-r8 --batch "$b7" $steps7b --out "$out/quick_peft.json" ;;
    headline)
      $jax --models 7b --methods lora-r8 --batch "$b7" $steps7b --out "$out/headline_jax.json"
      $peft --models 7b --methods lora-r8 --batch "$b7" $steps7b --out "$out/headline_peft.json" ;;
    jax7b)
      $jax --models 7b --methods "$adapters7b" --batch "$b7" $steps7b --out "$out/jax7b.json" ;;
    jax1b)
      $jax --models 1b --methods "$methods1b" --batch "$b1" $steps1b --out "$out/jax1b.json" ;;
    peft)
      $peft --models 7b --methods lora-r128 --batch "$b7" $steps7b --out "$out/peft7b.json"
      $peft --models 1b --methods lora-r8,lora-r128,full --batch "$b1" $steps1b --out "$out/peft1b.json" ;;
    gen)
      python -m bench.generate_throughput --out "$out/generate.json" $tiny ;;
    seq1024)
      $jax --models 7b --methods lora-r8 --seqs 1024 --batch $((2 * b7)) $steps7b --out "$out/seq1024_jax.json"
      $peft --models 7b --methods lora-r8 --seqs 1024 --batch $((2 * b7)) $steps7b --out "$out/seq1024_peft.json" ;;
    peftcompile)
      $peft --models 7b --methods lora-r8 --batch "$b7" --compile --steps 3 --warmup 2 --out "$out/peftcompile.json" ;;
    profile)
      python -m bench.profile_step --models 7b --methods lora-r8 --batch 4 --remat dots_with_no_batch_dims_saveable \
        $tiny --out "$out/profile.json" ;;
    *) echo "unknown part $1; parts: quick headline jax7b jax1b peft gen seq1024 peftcompile profile"; exit 2 ;;
  esac
}

skipped=()
for part in "${parts[@]}"; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    skipped+=("$part")
    continue
  fi
  echo "=== $part ($(( deadline - $(date +%s) )) s of the budget left)"
  start=$(date +%s)
  run_part "$part" || echo "=== part $part failed (exit $?); going on with the next"
  echo "=== $part took $(( $(date +%s) - start )) s"
done

python -m bench.report "$out"
if [ ${#skipped[@]} -gt 0 ]; then
  echo
  echo "time budget spent; not started: ${skipped[*]}. Run them with: bench/run_gpu.sh $out ${skipped[*]}"
fi
