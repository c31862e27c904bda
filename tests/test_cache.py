"""bild/cache.py against the installed transformers: a rewound cache equals a fresh one."""

from __future__ import annotations

import random

import pytest
import torch

from bild.cache import cache_kwarg, dynamic_cache, rewind, static_cache, static_unsupported

from tiny import FAMILIES


def _logits(model, cache, ids, encoder_outputs=None):
    key = "decoder_input_ids" if encoder_outputs is not None else "input_ids"
    extra = {"encoder_outputs": encoder_outputs} if encoder_outputs is not None else {}
    out = model(**{key: ids}, **{cache_kwarg(model): cache}, use_cache=True, **extra)
    return out.logits[0]


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_rewound_dynamic_cache_matches_a_fresh_pass(load_pair, family):
    model = load_pair(family).large
    enc = model.config.is_encoder_decoder
    encoder_outputs = model.get_encoder()(input_ids=torch.tensor([[5, 6, 7]])) if enc else None
    seq = torch.tensor([[3, 9, 4, 11, 12, 13]])
    fresh = _logits(model, dynamic_cache(model, enc), seq, encoder_outputs)  # [6, V]

    cache = dynamic_cache(model, enc)
    _logits(model, cache, torch.tensor([[3, 9, 4, 20, 21]]), encoder_outputs)  # a draft to undo
    rewind(cache, 2)
    assert cache.get_seq_length() == 3
    resumed = _logits(model, cache, seq[:, 3:], encoder_outputs)
    torch.testing.assert_close(resumed, fresh[3:], rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 6


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@torch.inference_mode()
def test_static_cache_after_random_feeds_and_rewinds_equals_a_fresh_pass(load_pair, family):
    """Feed and rewind at random; the logits of the next pass match one pass over the surviving prefix."""
    model = load_pair(family).large
    assert static_unsupported(model) is None
    rng = random.Random(0)
    cache, seq = static_cache(model, 96), []
    for _ in range(25):
        if seq and rng.random() < 0.4:
            drop = rng.randint(1, len(seq))
            rewind(cache, drop)
            del seq[len(seq) - drop:]
        new = [rng.randrange(3, 250) for _ in range(rng.randint(1, 6))]
        logits = _logits(model, cache, torch.tensor([new]))
        seq += new
        fresh = _logits(model, dynamic_cache(model, False), torch.tensor([seq]))
        torch.testing.assert_close(logits, fresh[-len(new):], rtol=1e-4, atol=1e-4)


def test_rewind_refuses_negative_counts(load_pair):
    model = load_pair("llama").large
    cache = dynamic_cache(model, False)
    with torch.inference_mode():
        _logits(model, cache, torch.tensor([[3, 4]]))
    rewind(cache, 0)  # no-op
    assert cache.get_seq_length() == 2
    with pytest.raises(ValueError):
        rewind(cache, -1)


def test_models_a_static_cache_cannot_serve_are_named(load_pair):
    assert "encoder-decoder" in static_unsupported(load_pair("t5").large)
    assert "sliding_attention" in static_unsupported(load_pair("mistral-sliding").large)
