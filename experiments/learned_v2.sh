#!/usr/bin/env bash
# docs/results.md §7: the learned policy against the paper's max-probability rule on the shared
# pycode pair (CPU, fp32, 2 threads). Traces on prompts from the pair's training sources that the
# alignment did not use; both policies tuned on the tuning prompts (modelled objective); their
# fronts benched side by side on the reported prompts, which neither training nor tuning saw.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/pycode_pair.sh
RUN=(--max-new-tokens 64 --wandb-mode disabled --cost-model out/pycode-costs.json)
[ -f out/pycode_align.jsonl ] || "${BILD_VENV:-.venv}/bin/python" experiments/make_prompts.py
"$BILD" traces "${PAIR[@]}" --prompts out/pycode_align.jsonl --offset 1200 --n 120 --max-new-tokens 64 --hidden \
  --out out/pycode_traces.jsonl
for model in logistic mlp; do
  "$BILD" train-policy --traces out/pycode_traces.jsonl --rule nll --rollback-threshold 2 --model "$model" \
    --out "out/learned-$model.json"
done
"$BILD" train-policy --traces out/pycode_traces.jsonl --rule nll --rollback-threshold 2 --model mlp --hidden \
  --out out/learned-mlp-hidden.json
for policy in bild learned; do
  space=(--space rollback_rule=nll --space rollback_threshold=2)
  [ "$policy" = learned ] && space+=(--space path=out/learned-mlp.json)
  "$BILD" tune "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 16 --policy "$policy" \
    --trials 12 --study "learned-v2-$policy" --storage sqlite:///out/learned-v2.db --sampler-seed 0 --confirm 0 \
    --out-dir out "${space[@]}"
done
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl --n 32 --methods large \
  --from-front out/learned-v2-bild-front.json --from-front out/learned-v2-learned-front.json \
  --json out/learned_v2.json --plot out/learned_v2.png
