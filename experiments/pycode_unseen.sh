#!/usr/bin/env bash
# docs/results.md §2-§4, §8-§9: the shared pycode pair on code from projects it never saw (CPU, fp32,
# 2 threads): every method side by side with modelled and measured speedups; a sweep of `exact`'s
# threshold on the tuning prompts (never the reported ones); the CPU fast paths.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/pycode_pair.sh
RUN=(--max-new-tokens 64 --wandb-mode disabled)
"$BILD" calibrate "${PAIR[@]}" --out out/pycode-costs.json
# the default of `exact`: a sweep on the tuning prompts
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_tune.jsonl --n 24 --cost-model out/pycode-costs.json \
  --methods large,exact@verify_below=0,exact@verify_below=0.2,exact@verify_below=0.3,exact@verify_below=0.4,exact@verify_below=0.5,exact@verify_below=0.6 \
  --json out/pycode_exact_sweep.json
# every method, untuned defaults, on the reported prompts
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl --n 48 --cost-model out/pycode-costs.json \
  --methods large,large-hf,large-hf-static,hf-assisted,exact,exact@verify_below=0,adaptive,bild,adaptive@rollback_rule=nll@rollback_threshold=2 \
  --json out/pycode_unseen.json --plot out/pycode_unseen.png
# the CPU fast paths
"$BILD" bench "${PAIR[@]}" "${RUN[@]}" --prompts experiments/data/pycode_eval.jsonl --n 24 --cost-model out/pycode-costs.json \
  --methods large,large@fast_path=static,exact,exact@fast_path=static,adaptive,adaptive@fast_path=static \
  --json out/pycode_fast_paths.json
