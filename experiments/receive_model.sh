#!/usr/bin/env bash
# Device side of experiments/fetch_qwen.sh: moves the chunks carried in SRC/<k>/ into DEST/parts, and once every
# chunk of a model has arrived joins them into DEST/<name> and checks its sha256 (the manifest's).
#
#   bash experiments/receive_model.sh [SRC] [DEST]      # defaults: .model/send and $HOME/models
#
# Files in $HOME outlive a call while the machine stays warm, so one chunk per call adds up; a model already joined
# and checked is left alone. Prints what is there and what is still missing.
set -euo pipefail
src=${1:-.model/send}
dest=${2:-$HOME/models}
mkdir -p "$dest/parts"
for manifest in "$src"/*/*.manifest; do
  [ -e "$manifest" ] || continue
  cp "$(dirname "$manifest")"/* "$dest/parts/"
done
for manifest in "$dest"/parts/*.manifest; do
  [ -e "$manifest" ] || continue
  read -r name count sha256 < "$manifest"
  if [ -f "$dest/$name" ] && echo "$sha256  $dest/$name" | sha256sum -c --status; then
    echo "ready: $dest/$name (sha256 $sha256)"
    continue
  fi
  arrived=$(find "$dest/parts" -name "$name.part*" | wc -l)
  if [ "$arrived" -lt "$count" ]; then
    echo "$name: $arrived of $count chunks here"
    continue
  fi
  cat "$dest/parts/$name".part* > "$dest/$name.tmp"   # split's suffixes 00, 01, ... sort in order
  if ! echo "$sha256  $dest/$name.tmp" | sha256sum -c --status; then
    echo "$name: joined $count chunks but the sha256 is not $sha256; carry them again" >&2
    rm -f "$dest/$name.tmp" "$dest/parts/$name".part*
    exit 1
  fi
  mv "$dest/$name.tmp" "$dest/$name"
  rm -f "$dest/parts/$name".part*
  echo "ready: $dest/$name (sha256 $sha256, joined from $count chunks)"
done
