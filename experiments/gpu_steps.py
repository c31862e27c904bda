"""Steps of experiments/gpu_check.sh that are short Python programs: `environment` and `smoke` (which also
measures the engine's own host time per draft and verification over replayed passes: bild/lab/enginecost.py).

Usage: python experiments/gpu_steps.py environment|smoke OUT_DIR (BILD_PAIR, BILD_DEVICE and
BILD_FAST from the check's environment). Each writes OUT_DIR/<step>.json and exits non-zero
when its check fails.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

WANT_TRANSFORMERS = os.environ.get("BILD_TRANSFORMERS_VERSION", "5.24.0")


def environment(out: Path) -> int:
    import torch
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "transformers_from": transformers.__file__,
             "cuda": torch.cuda.is_available(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(found, indent=2))
    (out / "environment.json").write_text(json.dumps(found, indent=2) + "\n")
    problems = []
    if transformers.__version__ != WANT_TRANSFORMERS:
        problems.append(f"transformers {transformers.__version__} imported, not {WANT_TRANSFORMERS} (carry .whl)")
    if os.environ.get("BILD_DEVICE", "cuda") != "cpu" and not found["cuda"]:
        problems.append("no CUDA GPU visible to torch")
    for p in problems:
        print(f"environment: {p}", file=sys.stderr)
    return 1 if problems else 0


def smoke(out: Path) -> int:
    from bild import GenerationConfig, ModelPair, generate, generate_single
    from bild.lab.enginecost import engine_cost
    from bild.lab.tasks import load_jsonl

    pair_dir, device = Path(os.environ["BILD_PAIR"]), os.environ.get("BILD_DEVICE", "cuda")
    fast = os.environ.get("BILD_FAST", "graph")
    prompts = [e.prompt for e in load_jsonl("experiments/data/pycode_eval.jsonl")[:2]]
    found: dict = {"fast_path": fast}
    started = time.perf_counter()
    reduced = ModelPair.from_pretrained(str(pair_dir / "small"), str(pair_dir / "large"), device=device,
                                        dtype="float32" if device == "cpu" else "bfloat16")
    one = generate(reduced, prompts[0], "exact", GenerationConfig(max_new_tokens=32, fast_path=fast))
    found["reduced_precision"] = {"dtype": str(reduced.dtype), "tokens": len(one.token_ids),
                                  "large": one.stats.large.model_dump(), "seconds": one.stats.wall_seconds}
    exact32 = ModelPair.from_pretrained(str(pair_dir / "small"), str(pair_dir / "large"), device=device,
                                        dtype="float32")
    config = GenerationConfig(max_new_tokens=48, fast_path=fast)
    same = []
    for prompt in prompts:
        a = generate(exact32, prompt, "exact", config)
        b = generate_single(exact32, prompt, "large", config)
        same.append(a.token_ids == b.token_ids)
    found["fp32_exact_equals_large"] = same
    found["engine"] = {policy: engine_cost(reduced, prompts[0], policy, GenerationConfig(max_new_tokens=64,
                                                                                         fast_path=fast)).model_dump()
                       for policy in ("exact", "adaptive")}
    found["seconds"] = time.perf_counter() - started
    print(json.dumps(found, indent=2))
    (out / "smoke.json").write_text(json.dumps(found, indent=2) + "\n")
    return 0 if all(same) else 1


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    sys.exit({"environment": environment, "smoke": smoke}[step](folder))
