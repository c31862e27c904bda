#!/usr/bin/env bash
# The learned policy against the paper's rule on the shared pycode pair (CPU, fp32, 2 threads):
# traces on held-out prompts 65-200, a classifier, then one Pareto search per policy on prompts 1-16.
# Results land in out/; docs/results.md quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${BILD_SHARED:-../shared}"
BILD="${BILD_VENV:-.venv}/bin/bild"
PAIR=(--small "$SHARED/models/pycode-pair/small" --large "$SHARED/models/pycode-pair/large" --device cpu --dtype float32)
mkdir -p out
sed -n '65,200p' "$SHARED/data/pycode_stdlib_heldout.jsonl" > out/pycode_train.jsonl
sed -n '1,16p' "$SHARED/data/pycode_stdlib_heldout.jsonl" > out/pycode_eval.jsonl
"$BILD" traces "${PAIR[@]}" --prompts out/pycode_train.jsonl --max-new-tokens 64 --out out/pycode_traces.jsonl
"$BILD" train-policy --traces out/pycode_traces.jsonl --out out/pycode_learned.json
for policy in bild learned; do
  space=(--space rollback_rule=nll --space rollback_threshold=0.5:6)
  [ "$policy" = learned ] && space+=(--space path=out/pycode_learned.json)
  "$BILD" tune "${PAIR[@]}" --prompts out/pycode_eval.jsonl --policy "$policy" --trials "${TRIALS:-20}" \
    --max-new-tokens 64 --threads 2 --study "pycode-$policy" --storage sqlite:///out/pycode-fronts.db \
    --seed 0 --out-dir out --wandb-mode disabled "${space[@]}"
done
# Speedups of two studies are measured minutes apart against their own baselines, and this machine's
# speed drifts; so the fronts' points are compared again side by side, on prompts 17-64 (not tuned on).
sed -n '17,64p' "$SHARED/data/pycode_stdlib_heldout.jsonl" > out/pycode_check.jsonl
L="learned@path=out/pycode_learned.json"
"$BILD" bench "${PAIR[@]}" --prompts out/pycode_check.jsonl --max-new-tokens 64 --threads 2 --wandb-mode disabled \
  --methods "large,bild@fallback_threshold=0.225@rollback_threshold=1.8,bild@fallback_threshold=0.002@rollback_threshold=4.7,$L@threshold=0.717@rollback_threshold=1.93,$L@threshold=0.428@rollback_threshold=2.31,$L@threshold=0.58@rollback_threshold=4.99" \
  --json out/learned_vs_bild.json --plot out/learned_vs_bild.png
