"""Which dtype decodes a model faster on this CPU: measured once per machine and model shape.

On a CPU a 1B model at batch 1 is memory-bound: bfloat16 halves the bytes a pass reads. On CPUs
with native bf16 instructions (AVX-512 BF16, AMX) it is the faster dtype everywhere. On others
(AVX2) torch converts bf16 on the fly: a one-token pass still gains, but a pass of many tokens
(a prompt, a long verification) runs its matrix products row by row and can be several times
slower than in float32. So `choose_cpu_dtype` times both on the large model and keeps the one
that decodes a typical generation faster alone: a prompt of `PROMPT` tokens, then `PROMPT`
one-token passes (the large model's own cost: a dtype is never chosen to make the baseline
slower). It also records a pass of `ROWS` tokens (a verification), so a report can say what
speculation costs in that dtype. The choice and its timings are cached under
`$BILD_CACHE/dtype/`, keyed by the hardware (CPU model and vector instructions), the model's
shape and the torch version, and recorded on the pair (`ModelPair.dtype_choice`).

Only models of `MEASURED_FROM` parameters or more are measured; smaller ones stay float32 (their
passes are bound by per-operation overhead, not bytes, and float32 keeps token identity exact).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from bild.cache import cache_kwarg, dynamic_cache
from bild.machine import config_shape, hardware
from bild.paths import cache_dir

MEASURED_FROM = 100_000_000  # parameters of the large model
CONTEXT, ROWS, REPEATS, PROMPT = 64, 4, 3, 128


def choice_path(model_config: Any, device: torch.device) -> Path:
    text = json.dumps([hardware(device), config_shape(model_config), torch.__version__])
    return cache_dir() / "dtype" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def cached_choice(model_config: Any, device: torch.device) -> dict[str, Any] | None:
    """The choice made before on this machine for a model of this shape, if any (read before loading)."""
    try:
        found = json.loads(choice_path(model_config, device).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("dtype") in ("float32", "bfloat16") else None


@torch.inference_mode()
def pass_seconds(model: PreTrainedModel, tokens: int, context: int = CONTEXT, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` passes of `tokens` tokens after `context` cached ones (after a warm-up pass)."""
    vocab = model.config.get_text_config(decoder=True).vocab_size
    ids = torch.arange(context + tokens, device=model.device)[None] * 7 % vocab  # [1, C + T]
    key = cache_kwarg(model)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        cache = dynamic_cache(model, False)
        if context:
            model(input_ids=ids[:, :context], **{key: cache}, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        model(input_ids=ids[:, context:], **{key: cache}, use_cache=True, logits_to_keep=1)
        best = min(best, time.perf_counter() - start)
    return best


def timings(model: PreTrainedModel) -> dict[str, float]:
    return {"1": pass_seconds(model, 1), str(ROWS): pass_seconds(model, ROWS),
            f"prompt {PROMPT}": pass_seconds(model, PROMPT, context=0, repeats=1)}


def choose_cpu_dtype(model: PreTrainedModel) -> dict[str, Any]:
    """Time `model` (float32, on the CPU) against a bfloat16 copy; the faster dtype, with the timings."""
    found = {"float32": timings(model)}
    half = copy.deepcopy(model).to(torch.bfloat16)
    found["bfloat16"] = timings(half)
    del half
    alone = {d: t[f"prompt {PROMPT}"] + PROMPT * t["1"] for d, t in found.items()}
    choice = {"dtype": min(alone, key=alone.get), "by": "measured", "hardware": hardware(model.device),
              "criterion": f"a {PROMPT}-token prompt and {PROMPT} one-token passes of the large model alone",
              "seconds": alone, "passes": found, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = choice_path(model.config, model.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(choice, indent=2) + "\n")
    return choice


def parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())
