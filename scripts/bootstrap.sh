#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with pinned dependencies.
# Usage: scripts/bootstrap.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "fedfleet needs Python >= 3.10" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.fedfleet-installed"
# Reinstall only when the pins changed.
want="$(cat pyproject.toml requirements/constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch==2.13.0 is pinned in pyproject (CPU build); constraints pin everything else.
    "$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e '.[dev,tflite]'
    echo "$want" > "$stamp"
fi
