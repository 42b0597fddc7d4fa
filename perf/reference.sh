#!/bin/sh
# Prepare the reference implementation (face-api on TensorFlow.js) for side-by-side timings.
# ../shared/reference is read-only input: its scripts are copied to build/reference and their
# npm dependencies installed there once (npm ci against the committed lock file).
#   perf/reference.sh            -> prints the directory holding anchor.js
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
src=${FW_SHARED:-$top/../shared}/reference
dst=$top/build/reference
[ -f "$src/anchor.js" ] || { echo "reference.sh: $src/anchor.js not found" >&2; exit 1; }
mkdir -p "$dst"
cp "$src"/*.js "$src"/package.json "$src"/package-lock.json "$dst"/
if [ ! -d "$dst/node_modules/@vladmandic/face-api" ]; then
    (cd "$dst" && npm ci --no-audit --no-fund --silent >&2)
fi
echo "$dst"
