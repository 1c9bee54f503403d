#!/usr/bin/env bash
# Reproduce the conversion figures: vhdkit vs qemu-img / cp, side by side.
#   bench/convert_vs_qemu.sh [--dir /dev/shm] [--size 2G] [--rounds 7]
# Needs qemu-img; creates and deletes a temporary input in --dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
# Resolve shims (pyenv) so that their start-up is not timed.
PY=$("$PY" -c 'import sys; print(sys.executable)')
exec "$PY" bench/convert_vs_qemu.py "$@"
