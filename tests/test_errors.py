"""Bad input: one clear `BildError`, never a raw exception from deep inside."""

from __future__ import annotations

import pytest
import torch

from bild import BildError, GenerationConfig, ModelPair, generate
from policies import make_policy

from tiny import build_pair, build_tokenizer

EXACT = make_policy("exact")


def test_mismatched_tokenizers_name_the_difference(tmp_path, pair_dirs):
    other = build_tokenizer(vocab_size=300)
    small, _ = build_pair(tmp_path, "llama", seed=5, tokenizer=other)
    _, large = pair_dirs("llama")
    with pytest.raises(BildError, match=r"do not share a tokenizer \(300 vs 258 tokens; token .* is (id|only)"):
        ModelPair.from_pretrained(str(small), str(large))


def test_decoder_only_with_encoder_decoder_is_refused(pair_dirs):
    with pytest.raises(BildError, match="decoder-only"):
        ModelPair.from_pretrained(str(pair_dirs("t5")[0]), str(pair_dirs("llama")[1]))


def test_missing_path_and_unreachable_hub(tmp_path):
    with pytest.raises(BildError, match="does not exist"):
        ModelPair.from_pretrained(str(tmp_path / "nope"), str(tmp_path / "nope"))
    with pytest.raises(BildError, match="hub"):
        ModelPair.from_pretrained("google-t5/t5-small", "google-t5/t5-large")
    with pytest.raises(BildError, match="not a Hugging Face model directory"):
        ModelPair.from_pretrained(str(tmp_path), str(tmp_path))


def test_prompt_problems(load_pair):
    pair = load_pair("llama")
    with pytest.raises(BildError, match="empty"):
        generate(pair, "", EXACT)
    with pytest.raises(BildError, match="context is 128 tokens"):
        generate(pair, "def add(a, b): " * 40, EXACT)
    with pytest.raises(BildError, match="lower max_new_tokens"):
        generate(pair, "def add(", EXACT, GenerationConfig(max_new_tokens=500))
    with pytest.raises(BildError, match="batch size 1"):
        generate(pair, ["def add(", "for i in"], EXACT)
    with pytest.raises(BildError, match="batch size 2"):
        generate(pair, torch.tensor([[3, 4], [5, 6]]), EXACT)
    with pytest.raises(BildError, match="outside the vocabulary"):
        generate(pair, [3, 10**6], EXACT)


def test_bad_device_and_dtype(pair_dirs):
    small, large = map(str, pair_dirs("llama"))
    with pytest.raises(BildError, match="dtype"):
        ModelPair.from_pretrained(small, large, dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(BildError, match="no CUDA GPU"):
            ModelPair.from_pretrained(small, large, device="cuda")


def test_a_policy_returning_nonsense_is_named(load_pair):
    from conftest import NeverFallback

    class Greedy(NeverFallback):
        def rollback(self, verification):
            return verification.n + 1

    with pytest.raises(BildError, match=r"Greedy.rollback returned"):
        generate(load_pair("llama"), "def add(", Greedy(), GenerationConfig(max_new_tokens=8, max_draft_tokens=2))
