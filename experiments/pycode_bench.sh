#!/usr/bin/env bash
# Every method on ../shared/models/pycode-pair with its held-out prompts (64 new tokens, fp32, CPU).
# Usage: bash experiments/pycode_bench.sh [N] [extra bench args...]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${BILD_SHARED:-../shared}"
N="${1:-32}"; shift || true
mkdir -p out
exec "${BILD_VENV:-.venv}/bin/bild" bench \
  --small "$SHARED/models/pycode-pair/small" --large "$SHARED/models/pycode-pair/large" \
  --prompts "$SHARED/data/pycode_stdlib_heldout.jsonl" --n "$N" --max-new-tokens 64 --threads 2 \
  --dtype float32 --device cpu \
  --methods "large,large-hf,small,hf-assisted,exact,exact@fallback_threshold=0.4,bild,bild@fallback_threshold=0.4@rollback_threshold=1,bild@fallback_threshold=0.2@rollback_threshold=1,bild@fallback_threshold=0.3@rollback_threshold=3" \
  --json out/pycode_bench.json --plot out/pycode_bench.png "$@"
