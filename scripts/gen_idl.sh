#!/usr/bin/env bash
# Regenerate idl/gen from idl/cluster.thrift with the Thrift compiler (Debian: thrift-compiler).
# Usage: scripts/gen_idl.sh [OUT_DIR]   (default: idl/gen in this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-idl/gen}"
command -v thrift >/dev/null || { echo "gen_idl.sh: the thrift compiler is not installed (apt-get install thrift-compiler)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
thrift --gen py:no_utf8strings -out "$tmp" idl/cluster.thrift
rm -f "$tmp"/idl/gen/*-remote
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$tmp/idl/gen" "$out"
echo "generated $(ls "$out" | tr '\n' ' ')in $out"
