#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the local stdlib pair if it is not cached, then bench it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${BILD_VENV:-.venv}/bin/bild" demo "$@"
