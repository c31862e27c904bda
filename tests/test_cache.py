"""bild/cache.py against the installed transformers: a rewound cache equals a fresh one."""

from __future__ import annotations

import pytest
import torch

from bild.cache import cache_kwarg, new_cache, rewind

from tiny import FAMILIES


def _logits(model, cache, ids, encoder_outputs):
    key = "decoder_input_ids" if encoder_outputs is not None else "input_ids"
    extra = {"encoder_outputs": encoder_outputs} if encoder_outputs is not None else {}
    out = model(**{key: ids}, **{cache_kwarg(model): cache}, use_cache=True, **extra)
    return out.logits[0]


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_rewound_cache_matches_a_fresh_pass(load_pair, family):
    model = load_pair(family).large
    enc = model.config.is_encoder_decoder
    encoder_outputs = model.get_encoder()(input_ids=torch.tensor([[5, 6, 7]])) if enc else None
    seq = torch.tensor([[3, 9, 4, 11, 12, 13]])
    fresh = _logits(model, new_cache(model, enc), seq, encoder_outputs)  # [6, V]

    cache = new_cache(model, enc)
    _logits(model, cache, torch.tensor([[3, 9, 4, 20, 21]]), encoder_outputs)  # a draft to undo
    rewind(cache, 3)
    assert cache.get_seq_length() == 3
    resumed = _logits(model, cache, seq[:, 3:], encoder_outputs)
    torch.testing.assert_close(resumed, fresh[3:], rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 6


def test_rewind_refuses_to_grow(load_pair):
    model = load_pair("llama").large
    cache = new_cache(model, False)
    with torch.inference_mode():
        _logits(model, cache, torch.tensor([[3, 4]]), None)
    rewind(cache, 2)  # no-op
    with pytest.raises(ValueError):
        rewind(cache, 3)
