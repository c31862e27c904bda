#!/usr/bin/env bash
# docs/results.md §11: draft sources on the shared pycode pair (CPU, fp32, 2 threads). The default of
# `exact`'s context lookup (`lookup_min`) is chosen on the tuning prompts; every method is then reported,
# untuned, on code from projects the pair never saw, side by side with transformers' assisted generation
# and prompt lookup, with the oracle over each set of sources.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/pycode_pair.sh
RUN=(--max-new-tokens 64 --wandb-mode disabled)
[ -f out/pycode-sources-costs.json ] || "$BILD" calibrate "${PAIR[@]}" --out out/pycode-sources-costs.json
# the defaults of lookup_min (exact's, then adaptive's): sweeps on the tuning prompts (never the reported ones)
[ -f out/pycode_lookup_sweep.json ] || "$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 24 --cost-model out/pycode-sources-costs.json \
  --methods large,exact@lookup_min=0,exact@lookup_min=1,exact@lookup_min=2,exact@lookup_min=3,pld \
  --json out/pycode_lookup_sweep.json
[ -f out/pycode_adaptive_sweep.json ] || "$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 24 --cost-model out/pycode-sources-costs.json \
  --methods large,adaptive@lookup_min=0,adaptive@lookup_min=1,adaptive@lookup_min=2,adaptive@lookup_min=3 \
  --json out/pycode_adaptive_sweep.json
# every method on the reported prompts
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl --n 48 --cost-model out/pycode-sources-costs.json \
  --methods large,hf-assisted,hf-pld,exact@lookup_min=0,exact,pld,adaptive@lookup_min=0,adaptive \
  --json out/pycode_sources.json
# agreement (the lookup's guess is the small model's top-1) as a signal: swept on the tuning prompts, then every
# method on the reported ones with the oracle's ladder, any lookup's bound and the gap by cause (§11)
[ -f out/pycode_agreement_sweep.json ] || "$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 24 --cost-model out/pycode-sources-costs.json \
  --methods large,exact,exact@trust_agreement=true,exact@trust_agreement=true@verify_below=0.6,adaptive@agreement=false,adaptive@agreement=true \
  --json out/pycode_agreement_sweep.json
[ -f out/pycode_agreement_sweep2.json ] || "$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 24 --cost-model out/pycode-sources-costs.json \
  --methods large,exact@verify_below=0.5,exact@verify_below=0.6,exact@trust_agreement=true@verify_below=0.5,exact@trust_agreement=true@verify_below=0.6,exact@trust_agreement=true@verify_below=0.7,exact@trust_agreement=true@verify_below=0.8 \
  --json out/pycode_agreement_sweep2.json
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl --n 48 --cost-model out/pycode-sources-costs.json \
  --methods large,hf-assisted,hf-pld,exact@lookup_min=0,exact,exact@trust_agreement=true@verify_below=0.6,pld,adaptive,adaptive@agreement=true \
  --json out/pycode_agreement_eval.json
