"""Where drafts come from besides the small model: a source proposes tokens, the policy decides whether to draft them.

A `DraftSource` looks at the sequence so far (prompt and committed output, pending drafts included)
and proposes the tokens it expects next (`Proposal`). The engine asks it before each small-model
pass; the policy's `lookup` hook says how many of the proposed tokens to draft. Drafted proposal
tokens are drafts like the small model's: they count against the cap, the large model verifies
them in the same pass and the rollback rule judges them; the small model catches up over them
later, in one multi-token pass. Statistics count them apart (`GenerationStats.lookup_drafts`).

`ContextLookup` is prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`): the latest
earlier occurrence of the last `max_ngram` tokens (then fewer, down to `min_ngram`) in the sequence,
and what followed it. Its index of n-grams is updated incrementally (each new position once) and
rewound with the sequence, so a proposal costs microseconds. On an encoder-decoder pair it searches
the decoder's own sequence, not the encoder's input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple


class Proposal(NamedTuple):
    """Tokens a source expects next, in order; `match`: how many tokens of context the guess rests on."""

    tokens: list[int]
    source: str
    match: int


class DraftSource(ABC):
    """Proposes the next tokens of a sequence; reset per generation, told when the sequence is cut back."""

    name = "source"

    def reset(self) -> None:  # noqa: B027  (a no-op for sources without state)
        """A generation starts."""

    def rewind(self, length: int) -> None:  # noqa: B027
        """The sequence was cut back to its first `length` tokens (a rollback)."""

    @abstractmethod
    def propose(self, seq: list[int], most: int) -> Proposal | None:
        """Up to `most` tokens expected after `seq` (None: no guess). `seq` only grows between calls, except
        where `rewind` said it was cut."""


class ContextLookup(DraftSource):
    """The continuation of the latest earlier occurrence of the sequence's last n-gram (n from `max_ngram` down to
    `min_ngram`)."""

    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.sizes = list(range(max_ngram, min_ngram - 1, -1))
        self.reset()

    def reset(self) -> None:
        self.seen: list[int] = []  # the indexed prefix of the sequence
        self.ends: dict[tuple[int, ...], list[int]] = {}  # n-gram -> where its occurrences end, in order

    def rewind(self, length: int) -> None:
        """Forget the n-grams ending past `length` (the latest occurrences are the last of each list)."""
        for end in range(len(self.seen), length, -1):
            for n in self.sizes:
                if end >= n:
                    self.ends[tuple(self.seen[end - n: end])].pop()
        del self.seen[length:]

    def sync(self, seq: list[int]) -> None:
        """Index the positions of `seq` past those already indexed."""
        for end in range(len(self.seen) + 1, len(seq) + 1):
            for n in self.sizes:
                if end >= n:
                    self.ends.setdefault(tuple(seq[end - n: end]), []).append(end)
        self.seen.extend(seq[len(self.seen):])

    def propose(self, seq: list[int], most: int) -> Proposal | None:
        self.sync(seq)
        for n in self.sizes:
            if len(seq) <= n:
                continue
            found = self.ends.get(tuple(seq[-n:]), [])
            end = next((e for e in reversed(found) if e < len(seq)), None)  # not the suffix itself
            if end is not None:
                return Proposal(seq[end: end + most], self.name, n)
        return None
