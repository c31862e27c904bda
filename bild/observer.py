"""The engine's observer seam: tracing, progress and statistics watch decoding without deciding.

An `Observer` gets every event of a generation; every hook is a no-op by default, so a subclass
overrides what it needs. Observers are passed to `generate(..., observers=[...])`; they must not
change what they are shown (a policy decides; an observer records).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bild.policy import DraftStep, Outcome, Verification
    from bild.stats import GenerationResult


class Observer:
    def before_generation(self, prompt_ids: list[int]) -> None:
        """A generation starts."""

    def after_draft(self, step: DraftStep, fallback: bool) -> None:
        """The small model proposed `step.token`; the policy fell back or kept it."""

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        """The large model verified `outcome.drafted` drafts and kept `outcome.kept`."""

    def after_generation(self, result: GenerationResult) -> None:
        """The generation finished."""
