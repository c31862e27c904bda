"""Sampling: speculative sampling's `rejection` rule reproduces the large model's distribution.

Chi-square tests over many seeded runs on a tiny vocabulary pair: the first two new tokens
drawn by BiLD with the rejection rule against the large model's exact distributions (computed
from its logits). A small model that disagrees with the large one makes rejections and
residual draws frequent, so the test exercises both paths.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from bild import GenerationConfig, generate, generate_single
from bild.sampling import Sampler
from policies import make_policy

TEMPERATURE = 1.5
RUNS = 3000


def binned(counts: Counter, probs: dict[int, float], runs: int) -> tuple[list[float], list[float]]:
    """Observed and expected counts, with tokens expected fewer than 5 times pooled."""
    observed, expected, rest_obs, rest_exp = [], [], 0.0, 0.0
    for token, p in probs.items():
        if p * runs >= 5:
            observed.append(counts.get(token, 0))
            expected.append(p * runs)
        else:
            rest_obs += counts.get(token, 0)
            rest_exp += p * runs
    if rest_exp > 0:
        observed.append(rest_obs)
        expected.append(rest_exp)
    scale = sum(observed) / sum(expected)  # float32 probabilities sum to 1 only within ~1e-6
    return observed, [e * scale for e in expected]


@torch.inference_mode()
def large_distributions(pair, prompt_ids: list[int], config: GenerationConfig):
    """p(x1) and the marginal p(x2) = sum_x1 p(x1) p(x2 | x1), exactly. # [V], [V]"""
    sampler = Sampler(config, pair.device)
    logits = pair.large(torch.tensor([prompt_ids])).logits[0, -1, : pair.vocab_size]
    p1 = sampler.distribution(logits)
    support = torch.nonzero(p1 > 1e-9).flatten()
    batch = torch.tensor([prompt_ids] * len(support))
    batch = torch.cat([batch, support[:, None]], dim=1)  # [S, T+1]
    p2_given = sampler.distribution(pair.large(batch).logits[:, -1, : pair.vocab_size])  # [S, V]
    p2 = (p1[support, None] * p2_given).sum(0)
    return p1, p2


@pytest.mark.parametrize("cap", [1, 3])
def test_rejection_rule_samples_the_large_models_distribution(load_pair, cap):
    pair = load_pair("llama", 2)
    prompt = "for i in"
    ids = pair.tokenizer(prompt)["input_ids"]
    base = GenerationConfig(max_new_tokens=2, temperature=TEMPERATURE, top_k=40, max_draft_tokens=cap)
    p1, p2 = large_distributions(pair, ids, base)
    policy = make_policy("bild", {"fallback_threshold": 0.0, "rollback_rule": "rejection"})
    first, second, rejected = Counter(), Counter(), 0
    for seed in range(RUNS):
        result = generate(pair, ids, policy, base.model_copy(update={"seed": seed}))
        first[result.token_ids[0]] += 1
        second[result.token_ids[1]] += 1
        rejected += result.stats.rolled_back_tokens
    assert rejected > RUNS * 0.1  # the residual path is really exercised
    for counts, p in ((first, p1), (second, p2)):
        observed, expected = binned(counts, {t: float(v) for t, v in enumerate(p) if v > 0}, RUNS)
        assert chisquare(observed, expected).pvalue > 1e-3


def test_sampling_is_reproducible_and_greedy_is_unchanged(load_pair):
    pair = load_pair("llama", 1)
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    policy = make_policy("bild", {"fallback_threshold": 0.3, "rollback_rule": "rejection"})
    assert generate(pair, "def add(", policy, sampled).token_ids == generate(pair, "def add(", policy,
                                                                             sampled).token_ids
    assert generate_single(pair, "def add(", "large", sampled).token_ids == generate_single(
        pair, "def add(", "large", sampled).token_ids
    greedy = GenerationConfig(max_new_tokens=12)
    assert (generate(pair, "def add(", policy, greedy).token_ids
            == generate_single(pair, "def add(", "large", greedy).token_ids)


def test_top_k_and_top_p_filter_the_distribution():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    top_k = Sampler(GenerationConfig(temperature=1.0, top_k=2, seed=0), torch.device("cpu")).distribution(logits)
    assert (top_k[2:] == 0).all() and torch.isclose(top_k.sum(), torch.tensor(1.0))
    top_p = Sampler(GenerationConfig(temperature=1.0, top_p=0.5, seed=0), torch.device("cpu")).distribution(logits)
    assert top_p[0] == 1.0  # the top token alone already holds more than half the mass
