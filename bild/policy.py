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
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class DraftStep:
    """What the small model predicts for the next token."""

    def __init__(self, logits: torch.Tensor, pending: int, position: int) -> None:
        self.logits = logits  # [V] small model's next-token logits
        self.pending = pending  # draft tokens since the large model last ran
        self.position = position  # new tokens so far, pending drafts included

    @cached_property
    def probs(self) -> torch.Tensor:  # [V]
        return torch.softmax(self.logits.float(), dim=-1)

    @cached_property
    def token(self) -> int:
        """The small model's greedy token: the draft the engine keeps unless the policy falls back."""
        return int(self.logits.argmax())

    @cached_property
    def max_prob(self) -> float:
        return float(self.probs.max())


class Verification:
    """The pending draft tokens and the large model's predictions at each of their positions."""

    def __init__(
        self, draft_tokens: list[int], draft_logits: list[torch.Tensor], large_logits: torch.Tensor,
        position: int,
    ) -> None:
        self.draft_tokens = draft_tokens  # [n] tokens the small model drafted
        self._draft_logits = draft_logits  # n x [V] small-model logits that drafted them
        self.large_logits = large_logits  # [n + 1, V]; row i predicts draft i, row n the next token
        self.position = position  # new tokens before the first draft

    @property
    def n(self) -> int:
        return len(self.draft_tokens)

    @cached_property
    def draft_logits(self) -> torch.Tensor:  # [n, V]
        return torch.stack(self._draft_logits)

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
    def rollback(self, verification: Verification) -> int:
        """How many of the `verification.n` pending draft tokens survive (0..n).

        The engine keeps that many, then appends the large model's token at the next position.
        """

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def params(self) -> dict[str, Any]:
        return self.model_dump()
