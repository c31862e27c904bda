"""The identities on the real trained pair at ../shared/models/pycode-pair (skipped when absent)."""

from __future__ import annotations

import json

import pytest
import torch

from bild import GenerationConfig, generate, generate_single
from policies import make_policy

from conftest import HELDOUT, AlwaysFallback, NeverFallback

pytestmark = pytest.mark.pycode
CFG = GenerationConfig(max_new_tokens=32)


@pytest.fixture(scope="module")
def prompts():
    if not HELDOUT.exists():
        pytest.skip(f"{HELDOUT} is absent")
    return [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines()[:6]]


def test_exact_and_fallback_equal_large_greedy(pycode_pair, prompts):
    for prompt in prompts:
        large = generate_single(pycode_pair, prompt, "large", CFG)
        exact = generate(pycode_pair, prompt, make_policy("exact", {"verify_below": 0.4}), CFG)
        assert exact.token_ids == large.token_ids
        assert exact.stats.accepted_draft_tokens > 0  # a trained pair agrees often
        assert generate(pycode_pair, prompt, AlwaysFallback(), CFG).token_ids == large.token_ids


def test_never_fallback_equals_small_greedy(pycode_pair, prompts):
    no_cap = CFG.model_copy(update={"max_draft_tokens": None})
    for prompt in prompts[:3]:
        small = generate_single(pycode_pair, prompt, "small", CFG)
        assert generate(pycode_pair, prompt, NeverFallback(), no_cap).token_ids == small.token_ids


def test_large_baseline_equals_transformers_generate(pycode_pair, prompts):
    ids = pycode_pair.tokenizer(prompts[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = pycode_pair.large.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=CFG.max_new_tokens)
    assert generate_single(pycode_pair, prompts[0], "large", CFG).token_ids == out[0, ids.shape[1]:].tolist()


def test_bild_calls_the_large_model_less_than_once_per_token(pycode_pair, prompts):
    policy = make_policy("bild", {"fallback_threshold": 0.3, "rollback_threshold": 3.0})
    results = [generate(pycode_pair, p, policy, CFG) for p in prompts]
    calls = sum(r.stats.large.calls for r in results)
    tokens = sum(r.stats.new_tokens for r in results)
    assert calls < 0.6 * tokens
