"""The engine's own cost per draft, verification and token, its model passes replayed (bild/lab/enginecost.py):
the CPU stand-in for the host overhead a GPU run adds around its captured passes (docs/results.md §5).

Usage: python experiments/engine_cost.py SMALL LARGE DTYPE FAST_PATH PROMPTS.jsonl [N]  (prints a Markdown table)
"""

from __future__ import annotations

import statistics
import sys

import torch

from bild import GenerationConfig, ModelPair, make_policy
from bild.lab.enginecost import engine_cost
from bild.lab.tasks import load_jsonl

POLICIES = ("exact", "exact@lookup_min=0", "adaptive", "pld", "bild")


def main(small: str, large: str, dtype: str, fast_path: str, prompts: str, n: str = "4") -> None:
    torch.set_num_threads(2)
    pair = ModelPair.from_pretrained(small, large, device="cpu", dtype=dtype)
    examples = load_jsonl(prompts)[: int(n)]
    print("| policy | ms per draft | ms per verification | ms per token | device ops of its own per pass |")
    print("|---|---|---|---|---|")
    for spec in POLICIES:
        name, _, setting = spec.partition("@")
        params = dict([setting.split("=")]) if setting else {}
        costs = [engine_cost(pair, e.prompt, make_policy(name, {k: int(v) for k, v in params.items()}),
                             GenerationConfig(max_new_tokens=64, fast_path=fast_path)) for e in examples]
        med = {k: statistics.median(getattr(c, k) for c in costs)
               for k in ("ms_per_draft", "ms_per_verification", "ms_per_token", "ops_per_pass")}
        print(f"| `{spec}` | {med['ms_per_draft']:.3f} | {med['ms_per_verification']:.3f} | {med['ms_per_token']:.3f} "
              f"| {med['ops_per_pass']:.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
