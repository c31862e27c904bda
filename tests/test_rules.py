"""The fallback rules (bild, entropy, topk-margin, learned) and rollback rules (nll, exact,
rejection): extremes reduce to one model alone, and the rules compose."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bild import BildError, GenerationConfig, generate, generate_single
from policies import make_policy
from policies.learned import FEATURES, FORMAT

from conftest import PROMPTS

CFG = GenerationConfig(max_new_tokens=16)
NO_CAP = CFG.model_copy(update={"max_draft_tokens": None})


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A hand-written classifier file: rejection probability rises as max_prob falls."""
    path = tmp_path_factory.mktemp("clf") / "clf.json"
    weights = [-3.0, 0.5] + [0.0] * (len(FEATURES) - 2)  # max_prob down, entropy up: rejection up
    path.write_text(json.dumps({
        "format": FORMAT, "features": FEATURES, "mean": [0.5, 1.0] + [0.0] * (len(FEATURES) - 2),
        "std": [0.2, 0.5] + [1.0] * (len(FEATURES) - 2), "layers": [{"weight": [weights], "bias": [0.0]}],
        "label": {"rule": "nll", "threshold": 5.0}, "vocab_size": 258, "training": {"note": "hand-written for tests"}}))
    return str(path)


def extremes(classifier: str) -> dict[str, tuple[dict, dict]]:
    """Per policy: (parameters that always fall back, parameters that never do)."""
    return {
        "bild": ({"fallback_threshold": 1.0}, {"fallback_threshold": 0.0}),
        "entropy": ({"entropy_threshold": 0.0}, {"entropy_threshold": 12.0}),
        "topk-margin": ({"margin": 1.0}, {"margin": 0.0}),
        "learned": ({"path": classifier, "threshold": 0.0}, {"path": classifier, "threshold": 1.0}),
    }


@pytest.mark.parametrize(("family", "seed"), [("llama", 0), ("llama", 2), ("t5", 1)])
def test_every_policy_at_its_extremes_is_one_model_alone(load_pair, classifier, family, seed):
    pair = load_pair(family, seed)
    for prompt in PROMPTS[:3]:
        large = generate_single(pair, prompt, "large", CFG).token_ids
        small = generate_single(pair, prompt, "small", NO_CAP).token_ids
        for name, (always, never) in extremes(classifier).items():
            for rule in ("nll", "exact", "rejection"):
                assert generate(pair, prompt, make_policy(name, {**always, "rollback_rule": rule}),
                                CFG).token_ids == large, (name, rule)
                # exact-style rules are exact whatever the fallback does
                if rule != "nll":
                    assert generate(pair, prompt, make_policy(name, {**never, "rollback_rule": rule}),
                                    CFG).token_ids == large, (name, rule)
            # never falling back, with a rollback bar no draft reaches: the small model alone
            assert generate(pair, prompt, make_policy(name, {**never, "rollback_threshold": 30.0}),
                            NO_CAP).token_ids == small, name


def test_rules_compose_and_nll_at_zero_is_exact(load_pair):
    pair = load_pair("llama", 1)
    for prompt, fb in itertools.product(PROMPTS[:3], [0.2, 0.5]):
        large = generate_single(pair, prompt, "large", CFG).token_ids
        for policy in (make_policy("entropy", {"entropy_threshold": fb * 4, "rollback_threshold": 0.0}),
                       make_policy("topk-margin", {"margin": fb, "k": 3, "rollback_threshold": 0.0})):
            assert generate(pair, prompt, policy, CFG).token_ids == large


def test_topk_margin_falls_back_more_as_k_grows(load_pair):
    """Top-1 minus the sum of more runners-up is smaller: the same margin is missed more often."""
    pair = load_pair("llama", 1)
    fallbacks = {k: sum(generate(pair, p, make_policy("topk-margin", {"margin": 0.3, "k": k}), CFG).stats.fallbacks
                        for p in PROMPTS) for k in (1, 3, 8)}
    assert fallbacks[1] <= fallbacks[3] <= fallbacks[8] and fallbacks[1] < fallbacks[8]


def test_learned_policy_file_errors(tmp_path, classifier, load_pair):
    with pytest.raises(BildError, match="does not exist"):
        make_policy("learned", {"path": str(tmp_path / "none.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BildError, match="corrupt"):
        make_policy("learned", {"path": str(bad)})
    good = json.loads(Path(classifier).read_text())
    bad.write_text(json.dumps({**good, "features": ["max_prob", "entropy"]}))
    with pytest.raises(BildError, match=r"trained on features \['max_prob', 'entropy'\]"):
        make_policy("learned", {"path": str(bad)})
    other = tmp_path / "other-vocab.json"
    other.write_text(json.dumps({**good, "vocab_size": 8192}))
    with pytest.raises(BildError, match="vocabulary of 8192 tokens, but this pair has 258"):
        generate(load_pair("llama"), "def add(", make_policy("learned", {"path": str(other), "threshold": 0.9}), CFG)
    with pytest.raises(BildError, match="path: Field required"):
        make_policy("learned")
