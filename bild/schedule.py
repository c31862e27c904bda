"""A round and the passes a schedule of rounds costs: the engine's pass bookkeeping, stated once.

A `Round` is what happens between two verifications: `drafted` drafts kept pending (the small
model's first, then `looked_up` from a draft source such as context lookup), `kept` of them
surviving the large model's judgement, and `discarded`: whether a fallback threw one more small
draft away (its pass was made). The engine records every round (`GenerationResult.rounds`); the
oracle (bild/lab/oracle.py) searches schedules of rounds; reports keep them per prompt.

`passes(rounds, prompt_tokens)` replays the engine's bookkeeping: each model feeds, in one pass,
every position of the shared sequence it has not seen. The small model's pass before each of its
drafts feeds what it lacks (the prompt first, later the large model's token, its own last draft,
and drafts a source added since); looked-up drafts are appended without a pass. The verification
feeds the large model's previous token and every draft. After it, both models forget what the
rollback cut. So `CostModel.seconds` of these passes is the modelled time of the schedule, and
`passes(recorded rounds)` equals a real generation's per-model statistics (a test checks it).
`widest` says the longest pass each model can make under a draft cap: what static caches and
calibration size for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from bild.stats import ModelStats


class Round(NamedTuple):
    drafted: int  # drafts verified together (small drafts first, then `looked_up` source drafts)
    kept: int  # of those, the ones that survived
    discarded: bool = False  # a fallback threw away one more small draft (its pass was made)
    looked_up: int = 0  # of the drafts, those a draft source proposed (no small pass)


class Feed(NamedTuple):
    """One pass: the model, the tokens it feeds, and whether it is the model's first pass (a prefill)."""

    model: str
    tokens: int
    first: bool


class Position(NamedTuple):
    """Where the bookkeeping stands between rounds: the sequence's length and what each model has seen of it."""

    length: int
    small_seen: int = 0
    large_seen: int = 0


def play(r: Round, at: Position) -> tuple[list[Feed], Position]:
    """The passes one round makes from `at`, and where it leaves the bookkeeping."""
    feeds, length, small_seen = [], at.length, at.small_seen
    for _ in range(r.drafted - r.looked_up):  # a small draft: the small model catches up, then drafts
        feeds.append(Feed("small", length - small_seen, small_seen == 0))
        small_seen, length = length, length + 1
    length += r.looked_up
    if r.discarded:
        feeds.append(Feed("small", length - small_seen, small_seen == 0))
        small_seen = length
    feeds.append(Feed("large", length - at.large_seen, at.large_seen == 0))  # its previous token and the drafts
    length = at.length + r.kept + 1
    return feeds, Position(length, min(small_seen, length - 1), length - 1)


def passes(rounds: Sequence[Round], prompt_tokens: int) -> tuple[ModelStats, ModelStats]:
    """The passes the engine makes for `rounds` after a prompt of `prompt_tokens` (decoder-only; an
    encoder-decoder's decoder starts from one token): how many tokens each model feeds, pass by pass."""
    stats = {"small": ModelStats(), "large": ModelStats()}
    at = Position(prompt_tokens)
    for r in rounds:
        feeds, at = play(r, at)
        for feed in feeds:
            model = stats[feed.model]
            model.calls += 1
            model.positions += feed.tokens
            if feed.first:
                model.prefill += feed.tokens
            else:
                model.passes[feed.tokens] = model.passes.get(feed.tokens, 0) + 1
    return stats["small"], stats["large"]


def widest(cap: int, sources: bool = False) -> dict[str, int]:
    """The longest pass each model makes under a draft cap: the large model verifies up to `cap` drafts after its
    own previous token; the small model catches up on its last draft and the large model's token, or, with a
    draft source, on up to `cap` source drafts as well."""
    return {"small": cap + 2 if sources else 2, "large": cap + 1}
