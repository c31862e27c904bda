"""On a CUDA GPU (skipped without one): the fast paths for real, and reduced precision.

CUDA graphs are captured and replayed here (the CPU tests exercise the same bookkeeping with a
fake capture). bf16/fp16 can flip near-tie argmaxes between a one-token pass and a multi-token
verification pass, so `exact` is only guaranteed token-for-token in fp32; in reduced precision it
must agree on most tokens.
"""

from __future__ import annotations

import pytest
import torch

from bild import GenerationConfig, ModelPair, generate, generate_single
from policies import make_policy

from conftest import PROMPTS, PYCODE, NeverFallback

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
CFG = GenerationConfig(max_new_tokens=32)


def pairs(pair_dirs, dtype, families=("llama", "t5")):
    dirs = [pair_dirs(f) for f in families]
    if PYCODE.exists():
        dirs.append((PYCODE / "small", PYCODE / "large"))
    return [ModelPair.from_pretrained(str(s), str(lg), device="cuda", dtype=dtype) for s, lg in dirs]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_runs_and_mostly_agrees(pair_dirs, dtype):
    for pair in pairs(pair_dirs, dtype):
        assert pair.device.type == "cuda" and pair.dtype == getattr(torch, dtype)
        agree = total = 0
        for prompt in PROMPTS[:4]:
            large = generate_single(pair, prompt, "large", CFG).token_ids
            exact = generate(pair, prompt, make_policy("exact"), CFG).token_ids
            agree += sum(a == b for a, b in zip(large, exact, strict=False))
            total += len(large)
            small = generate_single(pair, prompt, "small", CFG).token_ids
            never = generate(pair, prompt, NeverFallback(), CFG.model_copy(update={"max_draft_tokens": None}))
            assert never.token_ids == small  # same one-token passes: bitwise the same path
        assert agree >= 0.8 * total


def test_fp32_on_gpu_is_exact_on_every_fast_path(pair_dirs):
    for pair in pairs(pair_dirs, "float32", ("llama", "qwen2", "gpt2")):
        for path in ("off", "static", "graph"):
            cfg = CFG.model_copy(update={"fast_path": path})
            for prompt in PROMPTS[:4]:
                assert (generate(pair, prompt, make_policy("exact"), cfg).token_ids
                        == generate_single(pair, prompt, "large", cfg).token_ids), (pair.large_name, path)


def test_graphs_decode_what_eager_passes_do_and_are_captured_once(pair_dirs):
    for pair in pairs(pair_dirs, "float32", ("llama",)):
        policy = make_policy("bild", {"fallback_threshold": 0.4, "rollback_threshold": 2.0})
        for prompt in PROMPTS[:4]:
            off = generate(pair, prompt, policy, CFG.model_copy(update={"fast_path": "off"}))
            graph = generate(pair, prompt, policy, CFG.model_copy(update={"fast_path": "graph"}))
            assert off.token_ids == graph.token_ids
        runner = pair.runners[("large", "graph")]
        captured = dict(runner.steps)
        generate(pair, PROMPTS[0], policy, CFG.model_copy(update={"fast_path": "graph"}))
        assert runner.steps.keys() == captured.keys() and all(runner.steps[k] is v for k, v in captured.items())


def test_auto_is_graph_on_cuda_and_off_for_encoder_decoders(pair_dirs):
    llama, t5 = pairs(pair_dirs, "float32", ("llama", "t5"))[:2]
    generate(llama, PROMPTS[0], make_policy("exact"), CFG)
    generate(t5, PROMPTS[0], make_policy("exact"), CFG)
    assert ("large", "graph") in llama.runners and ("large", "off") in t5.runners
