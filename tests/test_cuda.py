"""On a CUDA GPU (skipped without one): the fast paths for real, and reduced precision.

CUDA graphs are captured and replayed here (the CPU tests exercise the same bookkeeping with a
stand-in capture). In float32 `exact` is the large model's greedy output token for token on every
fast path. In bf16/fp16 a multi-token verification can round differently from a one-token pass,
so after the first near-tie flip two outputs legitimately part: the check there is teacher-forced
(each token `exact` emitted is the large model's argmax given the same prefix, or a near tie).
"""

from __future__ import annotations

import pytest
import torch

from bild import GenerationConfig, ModelPair, generate, generate_single
from policies import make_policy

from conftest import PROMPTS, PYCODE, HoldsState, NeverFallback

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
CFG = GenerationConfig(max_new_tokens=32)


def pairs(pair_dirs, dtype, families=("llama", "t5")):
    dirs = [pair_dirs(f) for f in families]
    if PYCODE.exists():
        dirs.append((PYCODE / "small", PYCODE / "large"))
    return [ModelPair.from_pretrained(str(s), str(lg), device="cuda", dtype=dtype) for s, lg in dirs]


@torch.inference_mode()
def teacher_forced_misses(pair: ModelPair, prompt: str, tokens: list[int]) -> list[int]:
    """Positions where `tokens` is not the large model's argmax given the same prefix, beyond a near tie."""
    ids = pair.tokenizer(prompt)["input_ids"]
    if pair.encoder_decoder:
        start = pair.large.config.decoder_start_token_id
        logits = pair.large(input_ids=torch.tensor([ids], device=pair.device),
                            decoder_input_ids=torch.tensor([[start, *tokens[:-1]]], device=pair.device)).logits[0]
    else:
        logits = pair.large(input_ids=torch.tensor([ids + tokens], device=pair.device)).logits[0, len(ids) - 1: -1]
    logits = logits[:, : pair.vocab_size].float()  # [T, V]
    top = logits.topk(2, dim=-1).values  # [T, 2]
    tie = (top[:, 0] - top[:, 1]) <= 2**-5 * (top[:, 0].abs() + 1)  # within bf16 rounding of each other
    wrong = logits.argmax(-1) != torch.tensor(tokens, device=pair.device)
    return torch.nonzero(wrong & ~tie).flatten().tolist()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_emits_the_large_models_argmax_teacher_forced(pair_dirs, dtype):
    for pair in pairs(pair_dirs, dtype):
        assert pair.device.type == "cuda" and pair.dtype == getattr(torch, dtype)
        for prompt in PROMPTS[:4]:
            exact = generate(pair, prompt, make_policy("exact"), CFG).token_ids
            assert teacher_forced_misses(pair, prompt, exact) == [], (pair.large_name, prompt)
            small = generate_single(pair, prompt, "small", CFG).token_ids
            never = generate(pair, prompt, NeverFallback(), CFG.model_copy(update={"max_draft_tokens": None}))
            assert never.token_ids == small  # same one-token passes: bitwise the same path


def test_fp32_on_gpu_is_exact_on_every_fast_path(pair_dirs):
    for pair in pairs(pair_dirs, "float32", ("llama", "qwen2", "gpt2")):
        for path in ("off", "static", "graph"):
            cfg = CFG.model_copy(update={"fast_path": path})
            for prompt in PROMPTS[:4]:
                exact = generate(pair, prompt, make_policy("exact"), cfg)
                assert exact.token_ids == generate_single(pair, prompt, "large", cfg).token_ids, (pair.large_name, path)
                assert exact.stats.large.fast_path == path


def test_graphs_decode_what_eager_passes_do_and_are_captured_once_up_front(pair_dirs):
    for pair in pairs(pair_dirs, "float32", ("llama",)):
        policy = make_policy("bild", {"fallback_threshold": 0.4, "rollback_threshold": 2.0})
        for prompt in PROMPTS[:4]:
            off = generate(pair, prompt, policy, CFG.model_copy(update={"fast_path": "off"}))
            graph = generate(pair, prompt, policy, CFG.model_copy(update={"fast_path": "graph"}))
            assert off.token_ids == graph.token_ids
            assert graph.stats.large.graphs_captured == graph.stats.large.graph_buckets == 11
        runner = pair.runner("large", "graph", 11)
        captured = dict(runner.steps)
        generate(pair, PROMPTS[0], policy, CFG.model_copy(update={"fast_path": "graph"}))
        assert runner.steps.keys() == captured.keys() and all(runner.steps[k] is v for k, v in captured.items())


def test_many_prompts_in_a_row_with_padding_on_real_graphs(pair_dirs):
    """The padded runner's pad count once survived a generation and crashed the next (a device assert)."""
    (pair,) = pairs(pair_dirs, "float32", ("llama",))[:1]
    policy = make_policy("bild", {"fallback_threshold": 0.1, "rollback_threshold": 30.0})
    cfg = GenerationConfig(max_new_tokens=28, max_draft_tokens=None)
    for i in range(40):
        prompt = PROMPTS[i % len(PROMPTS)] + "x" * (i % 5)
        assert (generate(pair, prompt, policy, cfg.model_copy(update={"fast_path": "graph"})).token_ids
                == generate(pair, prompt, policy, cfg.model_copy(update={"fast_path": "off"})).token_ids)


def test_what_a_policy_holds_survives_later_replays(pair_dirs):
    (pair,) = pairs(pair_dirs, "float32", ("llama",))[:1]
    state = []
    generate(pair, PROMPTS[0], HoldsState(), CFG.model_copy(update={"fast_path": "graph"}), state=state)
    assert len(state) > 3 and all(torch.equal(held, then) for held, then in state)


def test_auto_is_graph_on_cuda_and_off_for_encoder_decoders(pair_dirs):
    llama, t5 = pairs(pair_dirs, "float32", ("llama", "t5"))[:2]
    assert generate(llama, PROMPTS[0], make_policy("exact"), CFG).stats.large.fast_path == "graph"
    assert generate(t5, PROMPTS[0], make_policy("exact"), CFG).stats.large.fast_path == "off"
