#!/usr/bin/env bash
# Create ./.venv (or $BILD_VENV) and install bild with its test tools; cheap when already done.
# torch: an importable torch is kept as is (install your CUDA build first if you have a GPU);
# otherwise torch==$BILD_TORCH_VERSION (default 2.13.0) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BILD_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==${BILD_TORCH_VERSION:-2.13.0}"
fi
stamp="$VENV/.bild-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$PY" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
