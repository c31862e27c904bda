#!/usr/bin/env bash
# docs/results.md §6: prediction alignment of the shared pycode pair's small model on prompts from
# its own training sources (never the held-out stdlib files, never the reported projects), then
# the aligned pair against the original on code from projects neither saw (CPU, fp32, 2 threads).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/pycode_pair.sh
LARGE="$SHARED/models/pycode-pair/large"
COMMON=(--device cpu --dtype float32 --threads 2)
RUN=(--max-new-tokens 64 --wandb-mode disabled)
"${BILD_VENV:-.venv}/bin/python" experiments/make_prompts.py   # out/pycode_align.jsonl from the training sources
head -48 experiments/data/pycode_eval.jsonl > out/pycode_eval48.jsonl
"$BILD" align --small "$SHARED/models/pycode-pair/small" --large "$LARGE" "${COMMON[@]}" --prompts out/pycode_align.jsonl \
  --n 1200 --exclude "$SHARED/data/pycode_stdlib_heldout.jsonl" --eval out/pycode_eval48.jsonl --out out/aligned \
  --minutes 10 --loss ce --data large --resume
"$BILD" calibrate --small out/aligned --large "$LARGE" "${COMMON[@]}" --out out/aligned-costs.json
# the same methods on the same prompts, original and aligned small model
for small in "$SHARED/models/pycode-pair/small" out/aligned; do
  name=$([ "$small" = out/aligned ] && echo aligned || echo original)
  costs=$([ "$name" = aligned ] && echo out/aligned-costs.json || echo out/pycode-costs.json)
  "$BILD" bench --small "$small" --large "$LARGE" "${COMMON[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl \
    --n 48 --cost-model "$costs" --methods large,hf-assisted,exact,adaptive --json "out/pycode_$name.json"
done
# the lossy operating points of the aligned pair: tuned on the tuning prompts, confirmed on the reported ones
"$BILD" tune --small out/aligned --large "$LARGE" "${COMMON[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl \
  --n 24 --policy bild --trials 24 --study aligned-bild --storage sqlite:///out/aligned-tune.db --sampler-seed 0 \
  --cost-model out/aligned-costs.json --confirm 0 --space rollback_rule=nll --space rollback_threshold=0.5:8 --out-dir out
"$BILD" bench --small out/aligned --large "$LARGE" "${COMMON[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl \
  --n 48 --cost-model out/aligned-costs.json --from-front out/aligned-bild-front.json \
  --methods large,exact,adaptive,adaptive@rollback_rule=nll@rollback_threshold=2 --json out/pycode_aligned_front.json
"$BILD" compare out/pycode_original.json out/pycode_aligned.json
