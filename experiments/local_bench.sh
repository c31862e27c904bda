#!/usr/bin/env bash
# The demo pair: built offline from the stdlib (cached), benched on the pycode task.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
exec "${BILD_VENV:-.venv}/bin/bild" bench --pair local --task pycode --n "${1:-32}" --max-new-tokens 48 \
  --threads 2 --json out/local_bench.json --plot out/local_bench.png
