"""What transformers' assisted generation did, counted from the outside, as `GenerationStats`.

transformers returns no counts for assisted generation, so without these `hf-assisted` would have
no τ, acceptance, per-position acceptance or modelled speedup: exactly where a comparison with the
field's baseline needs them. A forward pre-hook on each model records, per call, the tokens fed and
the tokens already in its cache. For the large model each call is one verification: it feeds the
tokens not yet cached (the prompt too, on the first call) and then the candidates; transformers
crops the cache to what the verification kept, so the next call's cache length says how many
tokens that verification added. The last verification's share is what the output holds beyond.

Limits: counts, not times (`seconds` stay 0: a bench times the whole call); one `generate` per
`counted` block; with sampling, `kept` is the tokens the large model kept, as for our policies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bild.cache import cache_kwarg, given_length
from bild.pair import ModelPair
from bild.stats import GenerationStats, ModelStats

FAST_PATH = "transformers"  # what a counted model's passes ran on: transformers' own generate


class PassLog:
    """One model's calls in order: (tokens fed, tokens already cached)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cache = cache_kwarg(model)  # looked up once: the hook runs inside the timed generation

    def hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        fed = next(x for x in (kwargs.get("decoder_input_ids"), kwargs.get("input_ids"), *args[:1],
                               kwargs.get("inputs_embeds")) if x is not None)  # [1, T] (or [1, T, D])
        self.calls.append((int(fed.shape[1]), given_length(kwargs.get(self.cache))))

    def stats(self) -> ModelStats:
        fed = [n for n, _ in self.calls]
        return ModelStats(calls=len(fed), positions=sum(fed), prefill=fed[0] if fed else 0,
                          passes=dict(Counter(fed[1:])), fast_path=FAST_PATH if fed else None)


@contextmanager
def counted(pair: ModelPair) -> Iterator[tuple[PassLog, PassLog]]:
    """Count the passes of both models while the block runs: (small's log, large's log)."""
    small, large = PassLog(pair.small), PassLog(pair.large)
    handles = [model.register_forward_pre_hook(log.hook, with_kwargs=True)
               for model, log in ((pair.small, small), (pair.large, large))]
    try:
        yield small, large
    finally:
        for h in handles:
            h.remove()


def assisted_stats(small: PassLog, large: PassLog, prompt_tokens: int, new_tokens: int) -> GenerationStats:
    """The statistics of one assisted generation from its pass logs (`prompt_tokens`: what the large model's
    sequence held before it: the prompt, or the decoder's start token)."""
    stats = GenerationStats(new_tokens=new_tokens, small=small.stats(), large=large.stats())
    before = prompt_tokens  # the sequence's length before verification i
    for i, (fed, cached) in enumerate(large.calls):
        drafted = fed - (before - cached)  # fed: the sequence's uncached tail, then the candidates
        after = large.calls[i + 1][1] + 1 if i + 1 < len(large.calls) else prompt_tokens + new_tokens
        kept = min(max(after - before - 1, 0), drafted)  # the large model's own token is the 1
        stats.draft_tokens += drafted
        stats.accepted_draft_tokens += kept
        if kept < drafted:
            stats.rollbacks += 1
            stats.rolled_back_tokens += drafted - kept
        stats.record_round(drafted, kept)
        before = after
    return stats
