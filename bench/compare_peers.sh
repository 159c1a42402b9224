#!/usr/bin/env bash
# Our LoRA train step against PyTorch's fastest configurations and the JAX peer google-tunix, on one GPU, in one run:
# one JSON file per row into OUTDIR, then one table per shape (bench/report.py --peers).
#
#   bench/compare_peers.sh OUTDIR [SHAPE ...]    shapes 7b 8b 1b (the default, in this order), ranks RANKS
#
# Per shape and rank, in this order, each row a fresh process that halves its batch when it does not fit:
#   ours_none          ours, remat none, layers unrolled               (bench/train_step.py)
#   peft_compile       PEFT + torch.compile, no checkpointing           (bench/peft_step.py)
#   liger_compile      the same with Liger's kernels (--liger)
#   flce_compile       the same with Liger's fused linear cross-entropy alone (--liger flce)
#   peft_bf16          PEFT + torch.compile, no checkpointing, bf16 adapters
#   tunix              google-tunix's PeftTrainer step, whole layers recomputed (bench/tunix_step.py)
#   ours_preset        ours as the llama2_7b preset runs: the memory plan picks remat and micro-batches, unrolled
#   peft_compile_ckpt  PEFT + torch.compile, checkpointing per layer
#   liger              PEFT + Liger, no torch.compile, no checkpointing
#   tunix_none         google-tunix with nothing recomputed
#   ours_bf16          ours_none with bf16 adapter parameters, as peft_bf16 (--adapter-dtype bfloat16)
#   ours_fused         ours_none with q/k/v and gate/up fused into one GEMM each (--fuse-projections)
#   ours_chunked_ce    ours_none with the cross-entropy taken in chunks of 1,024 tokens (--loss-chunk-tokens 1024)
#   ours_levers        ours_none with OURS_FLAGS added (default: both levers above)
#   ours_lorapro       ours_none's settings, LoRA-Pro's full AdamW (lorapro_adamw, fp32 moments) instead of AdamW
#   ours_lorapro_fused the same with its kernel-space step as one Pallas kernel (optimizer.fused_update)
#   ours_lorapro_bf16  ours_lorapro with bf16 moments (as the authors' standalone optimizer keeps them)
#   ours_lorapro_bf16_fused  the same with the fused step
# A row whose file exists is not run again (rerun the same command to go on); no row starts after BUDGET_S seconds,
# and the skipped ones are printed with their commands.
# Settings: RANKS ("8 16"), BATCH (4: every row's first batch), BUDGET_S (400; a row may take 3 more minutes),
# ROWS (a subset of the row names above), OURS_FLAGS (ours_levers' flags), TUNIX_PYTHON (python: the
# interpreter that has google-tunix); TINY=1 runs the rows with tiny shapes on the CPU (Liger rows: needs_cuda).
set -euo pipefail
out=${1:?usage: bench/compare_peers.sh OUTDIR [SHAPE ...]}
shift
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(7b 8b 1b)
[ -n "${TINY:-}" ] && shapes=(tiny)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"

deadline=$(( $(date +%s) + ${BUDGET_S:-400} ))
tiny=${TINY:+--tiny}
all_rows="ours_none peft_compile liger_compile flce_compile peft_bf16 tunix ours_preset peft_compile_ckpt liger
  tunix_none ours_bf16 ours_fused ours_chunked_ce ours_levers ours_lorapro ours_lorapro_fused ours_lorapro_bf16
  ours_lorapro_bf16_fused"
rows=(${ROWS:-$all_rows})
levers=${OURS_FLAGS:---fuse-projections --loss-chunk-tokens 1024}
ours="python -m bench.train_step --steps 3 --warmup 1 --unrolled --attention cudnn"
peft="python -m bench.peft_step --steps 3 --warmup 2"
fast="$peft --compile --no-grad-ckpt"
tunix="${TUNIX_PYTHON:-python} -m bench.tunix_step --steps 3 --warmup 1"

command_of() {  # row shape rank -> the row's command (without the deadline)
  local size="--models $2 --methods lora-r$3 --batch ${BATCH:-4} $tiny"
  case $1 in
    ours_none) echo "$ours --remat none $size" ;;
    ours_preset) echo "$ours --remat auto --accum 0 $size" ;;
    ours_bf16) echo "$ours --remat none --adapter-dtype bfloat16 $size" ;;
    ours_fused) echo "$ours --remat none --fuse-projections $size" ;;
    ours_chunked_ce) echo "$ours --remat none --loss-chunk-tokens 1024 $size" ;;
    ours_levers) echo "$ours --remat none $levers $size" ;;
    ours_lorapro) echo "$ours --remat none ${size/lora-r$3/lorapro_adamw-r$3-fp32}" ;;
    ours_lorapro_fused) echo "$ours --remat none ${size/lora-r$3/lorapro_adamw-r$3-fp32-fused}" ;;
    ours_lorapro_bf16) echo "$ours --remat none ${size/lora-r$3/lorapro_adamw-r$3-bf16}" ;;
    ours_lorapro_bf16_fused) echo "$ours --remat none ${size/lora-r$3/lorapro_adamw-r$3-bf16-fused}" ;;
    peft_compile) echo "$fast $size" ;;
    liger_compile) echo "$fast --liger all $size" ;;
    flce_compile) echo "$fast --liger flce $size" ;;
    peft_bf16) echo "$fast --adapter-dtype bfloat16 $size" ;;
    peft_compile_ckpt) echo "$peft --compile $size" ;;
    liger) echo "$peft --no-grad-ckpt --liger all $size" ;;
    tunix) echo "$tunix --remat decoder $size" ;;
    tunix_none) echo "$tunix --remat none $size" ;;
    *) echo "unknown row $1; rows:" $all_rows >&2; return 2 ;;
  esac
}

skipped=()
for shape in "${shapes[@]}"; do
  for rank in ${RANKS:-8 16}; do
    for row in "${rows[@]}"; do
      file="$out/peers_${shape}_r${rank}_${row}.json"
      command="$(command_of "$row" "$shape" "$rank") --out $file"
      if [ -e "$file" ]; then
        echo "=== $shape r$rank $row: already in $file"
      elif [ "$(date +%s)" -gt "$deadline" ]; then
        skipped+=("$command")
      else
        echo "=== $shape r$rank $row ($(( deadline - $(date +%s) )) s of the budget left): $command"
        $command --deadline "$deadline" || echo "=== $row failed (exit $?); going on with the next"
      fi
    done
  done
done

python -m bench.report "$out" --peers
if [ ${#skipped[@]} -gt 0 ]; then
  echo
  echo "time budget spent; not started (rerun the same bench/compare_peers.sh command to go on, or run them alone):"
  printf '  %s\n' "${skipped[@]}"
fi
