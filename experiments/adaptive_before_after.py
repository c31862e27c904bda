"""docs/results.md §8: `adaptive` as an earlier commit wrote it, beside today's, on the tuning prompts.

    python experiments/adaptive_before_after.py [COMMIT]     (default 7eadc5e: one draft at a time)

The earlier policies/adaptive.py is taken from git, registered as `adaptive-before` and benched
side by side with `large`, `exact` and `adaptive` on 24 prompts of pycode_tune.jsonl with the cost
model `experiments/pycode_unseen.sh` calibrated (`out/pycode-costs.json`), into
out/pycode_adaptive_before_after.json. It needs the shared pycode pair.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bild import GenerationConfig, ModelPair
from bild.costs import CostModel
from bild.lab.bench import format_table, oracle_lines, run_bench
from bild.lab.methods import parse_methods
from bild.lab.tasks import load_examples
from bild.lab.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
PAIR = ROOT.parent / "shared" / "models" / "pycode-pair"


def register_before(commit: str) -> None:
    source = subprocess.run(["git", "show", f"{commit}:policies/adaptive.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "adaptive_before.py"
    path.write_text(source.replace('@register_policy("adaptive")', '@register_policy("adaptive-before")'))
    spec = importlib.util.spec_from_file_location("adaptive_before", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def main(commit: str = "7eadc5e") -> None:
    register_before(commit)
    torch.set_num_threads(2)
    pair = ModelPair.from_pretrained(str(PAIR / "small"), str(PAIR / "large"), device="cpu", dtype="float32")
    examples = load_examples(prompts=str(ROOT / "experiments/data/pycode_tune.jsonl"), n=24)
    report, _ = run_bench(Workload(pair, examples, GenerationConfig(max_new_tokens=64),
                                   costs=CostModel.load(ROOT / "out/pycode-costs.json"), progress=False),
                          parse_methods("large,exact,adaptive-before,adaptive"),
                          out=str(ROOT / "out/pycode_adaptive_before_after.json"))
    print("\n".join([format_table(report), *oracle_lines(report)]))


if __name__ == "__main__":
    main(*sys.argv[1:])
