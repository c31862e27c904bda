#!/usr/bin/env bash
# The prepared GPU check: CUDA tests, per-pass costs of every fast path, and a bench of every
# method side by side, on the shared pycode pair, written under OUT as it goes.
#
#   on a GPU machine:  source .gpu/on-device.sh && bash experiments/gpu_check.sh "$OUT"
#   dry run here:      bash experiments/gpu_check.sh out/gpu_check cpu
#
# Takes under 8 minutes on one H100/H200; every step writes its own file, so a run cut off at its
# limit still returns what it measured. OUT/summary.md is the Markdown table docs/results.md quotes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu_check}"
DEVICE="${2:-cuda}"
PAIR="${PAIR:-../shared/models/pycode-pair}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
BILD=("$PY" -m bild.cli)
if [ "$DEVICE" = cpu ]; then
  DTYPE=float32; N="${N:-3}"; PATHS=(off static); FAST=static
else
  DTYPE=bfloat16; N="${N:-16}"; PATHS=(off graph); FAST=graph
fi
COMMON=(--small "$PAIR/small" --large "$PAIR/large" --device "$DEVICE" --dtype "$DTYPE")
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

log "environment"
"$PY" - <<'PY' | tee "$OUT/environment.txt"
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY

if [ "$DEVICE" != cpu ]; then
  log "CUDA tests"
  timeout 240 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider > "$OUT/cuda_tests.txt" 2>&1
  tail -n 3 "$OUT/cuda_tests.txt" | tee -a "$OUT/log.txt"
fi

for path in "${PATHS[@]}"; do
  log "per-pass costs, fast path $path"
  timeout 120 "${BILD[@]}" calibrate "${COMMON[@]}" --fast-path "$path" --repeats 20 --out "$OUT/costs-$path.json" \
    2>&1 | tail -n 1 | tee -a "$OUT/log.txt"
done

METHODS="large@fast_path=off,large@fast_path=$FAST,large-hf,large-hf-static,small@fast_path=$FAST,hf-assisted"
METHODS="$METHODS,exact@fast_path=off,exact@fast_path=$FAST,exact@fast_path=$FAST@fallback_threshold=0.4"
METHODS="$METHODS,bild@fast_path=$FAST@fallback_threshold=0.4@rollback_threshold=1"
[ "$DEVICE" != cpu ] && METHODS="$METHODS,large@fast_path=compile"
log "bench: $N prompts, 64 new tokens, $DTYPE"
timeout 330 "${BILD[@]}" bench "${COMMON[@]}" --prompts experiments/data/pycode_eval.jsonl --n "$N" \
  --max-new-tokens 64 --methods "$METHODS" --json "$OUT/bench.json" --wandb-mode disabled > "$OUT/bench.txt" 2>&1
tail -n 20 "$OUT/bench.txt" | tee -a "$OUT/log.txt"

log "summary"
"$PY" experiments/gpu_summary.py "$OUT" > "$OUT/summary.md" 2>>"$OUT/log.txt"
cat "$OUT/summary.md"
