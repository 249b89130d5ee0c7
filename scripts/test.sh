#!/usr/bin/env bash
# Lint, then the whole test suite against real QGIS (offscreen).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export QT_QPA_PLATFORM=offscreen
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" build/screenshots && chmod 700 "$XDG_RUNTIME_DIR"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# no path given: pytest runs its testpaths (tests/)
exec .venv/bin/python -m pytest "$@"
