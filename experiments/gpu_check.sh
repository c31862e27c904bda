#!/usr/bin/env bash
# The prepared GPU check: one call on a GPU machine without network, whose steps sum to at most
# BUDGET seconds (the setup of ../shared/gpu/on-device.sh takes up to a minute of the 600 s call).
# Every step runs under `timeout -s INT` (a grace of GRACE s, then KILL) and works in WORK, outside
# OUT; after every step OUT gets a fresh summary.md and evidence.tar.gz (everything in WORK), so a
# run killed anywhere still brings home what it measured, in two files (at most 8 come back).
#
#   on a GPU machine:  source .gpu/on-device.sh && bash experiments/gpu_check.sh "$OUT"
#   dry run here:      bash experiments/gpu_check.sh out/gpu_check cpu        (about 3 minutes)
#
# Steps and their limits in seconds (tests/test_gpu_check.py sums them, each with its grace and the
# refresh after it): environment 15, smoke 45, calibrate off 40 and fast 40, the core bench 140, the
# cudagraph-tree methods in a process of their own 60, the CUDA tests 70; 7 x (5 + 5) more.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=480
GRACE=5
REFRESH=5
OUT="${1:-out/gpu_check}"
DEVICE="${2:-cuda}"
PAIR="${PAIR:-../shared/models/pycode-pair}"
PY="${PYTHON:-python3}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$OUT" "$WORK"
if [ "$DEVICE" = cpu ]; then
  DTYPE=float32; FAST=static; N="${N:-2}"
else
  DTYPE=bfloat16; FAST=graph; N="${N:-16}"
fi
export BILD_PAIR="$PAIR" BILD_DEVICE="$DEVICE" BILD_FAST="$FAST" PYTHONUNBUFFERED=1
COMMON=(--small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" --wandb-mode disabled)
PROMPTS=(--prompts experiments/data/pycode_eval.jsonl --n "$N" --max-new-tokens 64)

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$WORK/log.txt"; }
refresh() {  # OUT: the summary and a tarball of WORK, nothing else
  timeout -s INT -k 2 "$REFRESH" "$PY" experiments/gpu_summary.py "$WORK" > "$OUT/summary.md.tmp" 2>>"$WORK/log.txt" \
    && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
  rm -f "$OUT/summary.md.tmp"
  tar czf "$OUT/evidence.tar.gz.tmp" -C "$WORK" . 2>/dev/null && mv "$OUT/evidence.tar.gz.tmp" "$OUT/evidence.tar.gz"
}
# step NAME LIMIT COMMAND...: run it under LIMIT seconds, its whole output into WORK/NAME.txt, its time in steps.tsv
step() {
  local name=$1 limit=$2 started
  shift 2
  log "$name (limit ${limit}s)"
  started=$(date +%s)
  timeout -s INT -k "$GRACE" "$limit" "$@" > "$WORK/$name.txt" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$(( $(date +%s) - started ))" "$rc" >> "$WORK/steps.tsv"
  log "$name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  tail -n 4 "$WORK/$name.txt" | sed 's/^/    /' | tee -a "$WORK/log.txt"
  refresh
}
printf 'step\tlimit_s\tseconds\texit\n' > "$WORK/steps.tsv"

step environment 15 "$PY" experiments/gpu_steps.py environment "$WORK"
step smoke 45 "$PY" experiments/gpu_steps.py smoke "$WORK"
step calibrate-off 40 "$PY" -m bild calibrate --small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" \
  --dtype "$DTYPE" --fast-path off --repeats 10 --accept-noisy --out "$WORK/costs-off.json"
step "calibrate-$FAST" 40 "$PY" -m bild calibrate --small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" \
  --dtype "$DTYPE" --fast-path "$FAST" --repeats 10 --accept-noisy --out "$WORK/costs-$FAST.json"

METHODS="large@fast_path=off,large,small,large-hf,hf-assisted,hf-pld,exact@fast_path=off,exact,exact@lookup_min=0"
METHODS="$METHODS,adaptive,pld,bild@fallback_threshold=0.4@rollback_threshold=1"
COSTS=()
[ -f "$WORK/costs-$FAST.json" ] && COSTS=(--cost-model "$WORK/costs-$FAST.json")
step bench 140 "$PY" -m bild bench "${COMMON[@]}" --dtype "$DTYPE" --fast-path "$FAST" "${PROMPTS[@]}" \
  --methods "$METHODS" "${COSTS[@]}" --json "$WORK/bench.json"

# cudagraph trees (inductor) in a process of their own, anchored on eager `large`, priced by the eager
# calibration (no hidden one; the setup's fast path is `off`, as the calibration's), on fewer prompts: their memory pools must not meet the runners' graphs
TREES="large@fast_path=off,large-hf-static"
[ "$DEVICE" != cpu ] && TREES="$TREES,large@fast_path=compile"
OFF=()
[ -f "$WORK/costs-off.json" ] && OFF=(--cost-model "$WORK/costs-off.json")
step bench-compile 60 "$PY" -m bild bench "${COMMON[@]}" --dtype "$DTYPE" --fast-path off \
  --prompts experiments/data/pycode_eval.jsonl --n 2 --max-new-tokens 32 --methods "$TREES" "${OFF[@]}" \
  --json "$WORK/bench-compile.json"

step cuda-tests 70 env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -m cuda tests/test_cuda.py \
  -p no:cacheprovider
cat "$OUT/summary.md" 2>/dev/null
