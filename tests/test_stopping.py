"""Stopping: EOS, max_new_tokens and stop strings end generation where greedy decoding would."""

from __future__ import annotations

from bild import GenerationConfig, generate, generate_single
from policies import make_policy


def test_stop_string_cuts_at_its_first_occurrence(load_pair):
    pair = load_pair("llama", 2)
    free = generate_single(pair, "def add(", "large", GenerationConfig(max_new_tokens=40))
    stop = free.text[5:7]  # something the large model will produce
    cfg = GenerationConfig(max_new_tokens=40, stop_strings=[stop])
    for result in (generate_single(pair, "def add(", "large", cfg),
                   generate(pair, "def add(", make_policy("exact", {"verify_below": 0.5}), cfg)):
        assert result.stop_reason == "stop_string"
        assert result.text.endswith(stop) and stop not in result.text[: -len(stop)]
        assert result.token_ids == free.token_ids[: len(result.token_ids)]
        assert len(result.token_ids) < len(free.token_ids)


def test_eos_ends_generation_and_is_kept(load_pair):
    pair = load_pair("llama", 0)
    eos = pair.tokenizer.eos_token_id
    # A prompt ending where the large model predicts EOS is rare with random weights, so force
    # it: ask the large model for its greedy continuation and declare its 3rd token the EOS.
    free = generate_single(pair, "for i in", "large", GenerationConfig(max_new_tokens=10))
    pair.large.generation_config.eos_token_id = [eos, free.token_ids[2]]
    try:
        for policy in (make_policy("exact"), make_policy("bild", {"rollback_threshold": 0.0})):
            result = generate(pair, "for i in", policy, GenerationConfig(max_new_tokens=10))
            assert result.stop_reason == "eos"
            assert result.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]
    finally:
        pair.large.generation_config.eos_token_id = eos


def test_max_new_tokens_is_exact_even_when_every_draft_is_accepted(load_pair):
    pair = load_pair("llama", 1)
    for cap in (1, 3, None):
        cfg = GenerationConfig(max_new_tokens=7, max_draft_tokens=cap)
        result = generate(pair, "import os\n", make_policy("bild", {"fallback_threshold": 0.0,
                                                                  "rollback_threshold": 20.0}), cfg)
        assert len(result.token_ids) == 7 and result.stop_reason == "max_new_tokens"
