#!/usr/bin/env bash
# The prepared GPU check: one call of at most 540 s on a GPU machine without network. Every step
# runs under its own timeout and writes its own files under OUT (full logs included), so a run cut
# off anywhere returns what it measured; the summary reads whatever is there.
#
#   on a GPU machine:  source .gpu/on-device.sh && bash experiments/gpu_check.sh "$OUT"
#   dry run here:      bash experiments/gpu_check.sh out/gpu_check cpu        (about 3 minutes)
#
# Steps (limits in seconds, 540 in all): environment 20, smoke 60, calibrate off 45 and fast 45,
# the core bench 200, the cudagraph-tree methods in a process of their own 80, the CUDA tests 80,
# summary 10. OUT/summary.md is what docs/results.md §5 quotes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu_check}"
DEVICE="${2:-cuda}"
PAIR="${PAIR:-../shared/models/pycode-pair}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if [ "$DEVICE" = cpu ]; then
  DTYPE=float32; FAST=static; N="${N:-2}"
else
  DTYPE=bfloat16; FAST=graph; N="${N:-16}"
fi
export BILD_PAIR="$PAIR" BILD_DEVICE="$DEVICE" BILD_FAST="$FAST" PYTHONUNBUFFERED=1
COMMON=(--small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" --wandb-mode disabled)
PROMPTS=(--prompts experiments/data/pycode_eval.jsonl --n "$N" --max-new-tokens 64)

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }
# step NAME LIMIT COMMAND...: run it under LIMIT seconds, its whole output into OUT/NAME.txt
step() {
  local name=$1 limit=$2
  shift 2
  log "$name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  log "$name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  tail -n 4 "$OUT/$name.txt" | sed 's/^/    /' | tee -a "$OUT/log.txt"
}

step environment 20 "$PY" experiments/gpu_steps.py environment "$OUT"
step smoke 60 "$PY" experiments/gpu_steps.py smoke "$OUT"
step calibrate-off 45 "$PY" -m bild.cli calibrate --small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" \
  --dtype "$DTYPE" --fast-path off --repeats 10 --out "$OUT/costs-off.json"
step "calibrate-$FAST" 45 "$PY" -m bild.cli calibrate --small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" \
  --dtype "$DTYPE" --fast-path "$FAST" --repeats 10 --out "$OUT/costs-$FAST.json"

METHODS="large@fast_path=off,large,small,large-hf,hf-assisted,exact@fast_path=off,exact,adaptive"
METHODS="$METHODS,bild@fallback_threshold=0.4@rollback_threshold=1"
COSTS=()
[ -f "$OUT/costs-$FAST.json" ] && COSTS=(--cost-model "$OUT/costs-$FAST.json")
step bench 200 "$PY" -m bild.cli bench "${COMMON[@]}" --dtype "$DTYPE" --fast-path "$FAST" "${PROMPTS[@]}" \
  --methods "$METHODS" "${COSTS[@]}" --json "$OUT/bench.json"

# cudagraph trees (inductor) in a process of their own, anchored on eager `large`: their memory pools
# must not meet the runners' graphs (inductor may free a workspace a captured graph still uses)
TREES="large@fast_path=off,large-hf-static"
[ "$DEVICE" != cpu ] && TREES="$TREES,large@fast_path=compile"
step bench-compile 80 "$PY" -m bild.cli bench "${COMMON[@]}" --dtype "$DTYPE" --fast-path "$FAST" \
  "${PROMPTS[@]}" --methods "$TREES" --json "$OUT/bench-compile.json"

step cuda-tests 80 env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -m cuda tests/test_cuda.py \
  -p no:cacheprovider
step summary 10 "$PY" experiments/gpu_summary.py "$OUT"
cp "$OUT/summary.txt" "$OUT/summary.md" 2>/dev/null
cat "$OUT/summary.md" 2>/dev/null
