"""The engine's defining identities, over families, random pairs and prompts (fp32, CPU).

- `exact` equals large-only greedy, whatever the small model does;
- a policy that always falls back equals large-only greedy;
- a policy that never falls back (no cap) equals small-only greedy;
- the large-only baseline equals transformers' own greedy `generate`.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bild import GenerationConfig, generate, generate_single
from policies import make_policy

from conftest import PROMPTS, AlwaysFallback, NeverFallback
from tiny import FAMILIES

SEEDS = (0, 1, 2)
CFG = GenerationConfig(max_new_tokens=24)


def cases():
    return list(itertools.product(FAMILIES, SEEDS))


@pytest.mark.parametrize(("family", "seed"), cases())
def test_exact_equals_large_greedy(load_pair, family, seed):
    pair = load_pair(family, seed)
    for prompt, threshold, cap in zip(PROMPTS, itertools.cycle([0.0, 0.3, 0.9]),
                                      itertools.cycle([10, None, 1, 4]), strict=False):
        cfg = CFG.model_copy(update={"max_draft_tokens": cap})
        large = generate_single(pair, prompt, "large", cfg)
        exact = generate(pair, prompt, make_policy("exact", {"verify_below": threshold}), cfg)
        assert exact.token_ids == large.token_ids, (prompt, threshold, cap)
        assert exact.text == large.text


@pytest.mark.parametrize(("family", "seed"), cases())
def test_always_fallback_equals_large_and_never_equals_small(load_pair, family, seed):
    pair = load_pair(family, seed)
    no_cap = CFG.model_copy(update={"max_draft_tokens": None})
    for prompt in PROMPTS[:4]:
        large = generate_single(pair, prompt, "large", CFG)
        small = generate_single(pair, prompt, "small", CFG)
        always = generate(pair, prompt, AlwaysFallback(), CFG)
        never = generate(pair, prompt, NeverFallback(), no_cap)
        assert always.token_ids == large.token_ids
        assert always.stats.draft_tokens == 0
        assert never.token_ids == small.token_ids
        assert never.stats.fallbacks == 0 and never.stats.rollbacks == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_large_baseline_equals_transformers_generate(load_pair, family):
    pair = load_pair(family)
    for prompt in PROMPTS[:3]:
        ids = pair.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ours = generate_single(pair, prompt, "large", CFG)
        with torch.inference_mode():
            out = pair.large.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=CFG.max_new_tokens, min_new_tokens=0)
        theirs = out[0, (0 if pair.encoder_decoder else ids.shape[1]):].tolist()
        if pair.encoder_decoder:
            theirs = theirs[1:]  # drop the decoder start token
        assert ours.token_ids == theirs[: len(ours.token_ids)]


@pytest.mark.parametrize(("family", "seed"), cases())
def test_bild_extremes_and_stats_are_consistent(load_pair, family, seed):
    """bild with rollback 0 is exact; its statistics add up for any thresholds."""
    pair = load_pair(family, seed)
    for prompt, fb, rb in zip(PROMPTS, [0.0, 0.2, 0.5, 0.8, 0.95], [0.0, 1.0, 3.0, 8.0, 20.0], strict=False):
        result = generate(pair, prompt, make_policy("bild", {"fallback_threshold": fb, "rollback_threshold": rb}), CFG)
        s = result.stats
        if rb == 0.0:
            assert result.token_ids == generate_single(pair, prompt, "large", CFG).token_ids
        assert s.new_tokens == len(result.token_ids) <= CFG.max_new_tokens
        assert s.accepted_draft_tokens + s.rolled_back_tokens == s.draft_tokens
        assert s.rollbacks <= s.large.calls and s.rolled_back_tokens >= s.rollbacks
        assert s.small.calls == s.draft_tokens + s.fallbacks
        # a large call follows every fallback and cap hit (and a drafted EOS, or the length limit)
        assert s.large.calls >= s.fallbacks + s.forced_verifications
