"""The `Policy` interface: every decision BiLD makes, and nothing else.

The engine (bild/engine.py) knows nothing about thresholds. At each step it shows the policy
what the small model predicts (`DraftStep`) and asks `fallback`: hand control to the large
model? When the large model has run over the pending draft tokens, it shows the policy both
models' predictions (`Verification`) and asks `rollback`: how many draft tokens survive?

A policy is a pydantic model: its parameters are fields, validated on construction, with
bounds (`Field(ge=..., le=...)`) that document the sensible range and from which tuners derive
search spaces. Policies are immutable; everything a decision needs is in the view it gets.

The views compute derived quantities (probabilities, argmax) lazily and at most once, so a
policy that does not look at something costs nothing for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict

from bild.sampling import Sampler


class DraftStep:
    """What the small model predicts for the next token."""

    def __init__(self, logits: torch.Tensor, pending: int, position: int, sampler: Sampler) -> None:
        self.logits = logits  # [V] small model's next-token logits
        self.pending = pending  # draft tokens since the large model last ran
        self.position = position  # new tokens so far, pending drafts included
        self.sampler = sampler

    @cached_property
    def probs(self) -> torch.Tensor:  # [V]
        """The small model's distribution (softmax of its logits, whatever the sampling settings)."""
        return torch.softmax(self.logits.float(), dim=-1)

    @cached_property
    def max_prob(self) -> float:
        return float(self.probs.max())

    @cached_property
    def entropy(self) -> float:
        """Entropy of `probs` in nats."""
        return float(-(self.probs * torch.log(self.probs.clamp_min(1e-30))).sum())

    @cached_property
    def sampling_probs(self) -> torch.Tensor | None:  # [V]
        """The distribution the draft is drawn from (None when greedy)."""
        return None if self.sampler.greedy else self.sampler.distribution(self.logits)

    @cached_property
    def token(self) -> int:
        """The draft the engine keeps unless the policy falls back: greedy, or drawn once."""
        return self.sampler.pick(self.logits, self.sampling_probs)


class Verdict(NamedTuple):
    """A rollback decision: `kept` drafts survive; the next token is drawn from `correction`
    (a distribution over the vocabulary) or, when None, is the large model's own token."""

    kept: int
    correction: torch.Tensor | None = None  # [V]


class Verification:
    """The pending draft tokens and the large model's predictions at each of their positions."""

    def __init__(self, steps: list[DraftStep], large_logits: torch.Tensor, position: int, sampler: Sampler) -> None:
        self.steps = steps  # the n draft steps, in order
        self.draft_tokens = [s.token for s in steps]  # [n] tokens the small model drafted
        self.large_logits = large_logits  # [n + 1, V]; row i predicts draft i, row n the next token
        self.position = position  # new tokens before the first draft
        self.sampler = sampler

    @property
    def n(self) -> int:
        return len(self.draft_tokens)

    @property
    def greedy(self) -> bool:
        return self.sampler.greedy

    @cached_property
    def draft_logits(self) -> torch.Tensor:  # [n, V]
        return torch.stack([s.logits for s in self.steps])

    @cached_property
    def draft_probs(self) -> torch.Tensor:  # [n, V]
        """The distributions the drafts were drawn from (sampling only)."""
        return torch.stack([s.sampling_probs for s in self.steps])

    @cached_property
    def large_probs(self) -> torch.Tensor:  # [n + 1, V]
        """The large model's distributions under the same sampling settings (sampling only)."""
        return self.sampler.distribution(self.large_logits)

    @cached_property
    def draft_ids(self) -> torch.Tensor:  # [n]
        return torch.tensor(self.draft_tokens, device=self.large_logits.device)

    @cached_property
    def large_tokens(self) -> list[int]:
        """The large model's greedy token at each of the n + 1 positions."""
        return self.large_logits.argmax(dim=-1).tolist()

    @cached_property
    def first_mismatch(self) -> int:
        """Index of the first draft the large model would not have chosen itself (n if none)."""
        for i, (d, g) in enumerate(zip(self.draft_tokens, self.large_tokens, strict=False)):
            if d != g:
                return i
        return self.n

    @cached_property
    def draft_nll(self) -> torch.Tensor:  # [n]
        """−log p_large(draft token) at each draft position: the paper's rollback distance."""
        logp = torch.log_softmax(self.large_logits[: self.n].float(), dim=-1)
        return -logp.gather(-1, self.draft_ids[:, None]).squeeze(-1)


class Policy(BaseModel, ABC):
    """Base class of every policy: subclass it, declare parameters as fields, implement both rules.

    Optional hook: override `describe` to document the policy in `bild policies`
    (the class docstring is used by default).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    name: ClassVar[str] = ""  # set by the registry's decorator

    @abstractmethod
    def fallback(self, step: DraftStep) -> bool:
        """True to discard this draft and let the large model produce the next token."""

    @abstractmethod
    def rollback(self, verification: Verification) -> int | Verdict:
        """How many of the `verification.n` pending draft tokens survive (0..n).

        The engine keeps that many, then appends the large model's token at the next position
        (greedy: its argmax; sampling: a draw from its distribution). Return a `Verdict` to
        draw that token from another distribution instead (speculative sampling's residual).
        """

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def params(self) -> dict[str, Any]:
        return self.model_dump()
