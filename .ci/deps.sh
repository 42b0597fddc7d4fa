#!/bin/sh
# Install the Debian packages facewire builds and tests with, when they are missing.
# As root: apt-get install them. Otherwise print the exact command and fail.
# DEB_PKGS comes from the Makefile (make deps), so the list lives in one place.
set -eu
missing=""
for p in $DEB_PKGS; do
    # npm may come from outside Debian (a NodeSource or image-provided node): a working npm
    # command is what fetching the models needs, whichever package provides it.
    if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then
        continue
    fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "deps: missing Debian packages; run:" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
fi
