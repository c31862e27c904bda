"""Caches really are rewound: each model is fed every position once, plus only what was rolled back.

Forward hooks on the real models record every pass: where in the cache it starts and how many
tokens it feeds. The statistics must match the hooks, every pass must start exactly where the
cache ends (no prefix is recomputed), and the total fed is bounded by the final sequence plus
the rolled-back drafts.
"""

from __future__ import annotations

import pytest

from bild import GenerationConfig, generate
from bild.cache import cache_kwarg
from policies import make_policy

from conftest import PROMPTS
from tiny import FAMILIES


def record_passes(model, log: list[tuple[int, int]]):
    key = cache_kwarg(model)
    ids_key = "decoder_input_ids" if model.config.is_encoder_decoder else "input_ids"

    def hook(module, args, kwargs):
        log.append((kwargs[key].get_seq_length(), kwargs[ids_key].shape[1]))  # (cache length, new tokens)

    return model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("fallback", "rollback"), [(0.0, 0.0), (0.5, 2.0), (0.9, 6.0)])
def test_each_position_is_fed_once_unless_rolled_back(load_pair, family, fallback, rollback):
    pair = load_pair(family, 1)
    policy = make_policy("bild", {"fallback_threshold": fallback, "rollback_threshold": rollback})
    for prompt in PROMPTS[:4]:
        small_log, large_log = [], []
        handles = [record_passes(pair.small, small_log), record_passes(pair.large, large_log)]
        try:
            result = generate(pair, prompt, policy, GenerationConfig(max_new_tokens=20))
        finally:
            for h in handles:
                h.remove()
        s = result.stats
        assert s.small.calls == len(small_log) and s.large.calls == len(large_log)
        assert s.small.positions == sum(n for _, n in small_log)
        assert s.large.positions == sum(n for _, n in large_log)
        assert small_log[0][0] == 0 and large_log[0][0] == 0  # the prompt is prefilled once
        final = len(pair.tokenizer(prompt)["input_ids"]) if not pair.encoder_decoder else 1
        final += s.new_tokens
        assert final - 1 <= s.large.positions <= final + s.rolled_back_tokens
        assert s.small.positions <= final + s.rolled_back_tokens
        # large-model passes only ever go forward, from where its (rewound) cache ends
        end = 0
        for start, n in large_log:
            assert start <= end
            end = start + n
