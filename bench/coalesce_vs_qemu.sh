#!/usr/bin/env bash
# Coalesce figures: vhdkit coalesce -o vs qemu-img convert (raw -> vpc dynamic)
# of the same content, plus libvhdi (pyvhdi) and vhdkit read loops of the chain.
#   bench/coalesce_vs_qemu.sh [--dir DIR] [--size 2G] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3)}
PY=$("$PY" -c 'import sys; print(sys.executable)')   # resolve pyenv shims
exec "$PY" bench/coalesce_vs_qemu.py "$@"
