"""The engine's observer seam: tracing, progress and statistics watch decoding without deciding.

An `Observer` gets every event of a generation; every hook is a no-op by default, so a subclass
overrides what it needs. Observers are passed to `generate(..., observers=[...])`; they must not
change what they are shown (a policy decides; an observer records). The engine attaches a
`StatsRecorder` to every generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bild.stats import GenerationStats

if TYPE_CHECKING:
    from bild.policy import DraftStep, Outcome, Verification
    from bild.stats import GenerationResult


class Observer:
    def before_generation(self, prompt_ids: list[int]) -> None:
        """A generation starts."""

    def after_draft(self, step: DraftStep, fell_back: bool) -> None:
        """The small model proposed `step.token`; the policy fell back or kept it."""

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        """The large model verified `outcome.drafted` drafts and kept `outcome.kept`."""

    def after_generation(self, result: GenerationResult) -> None:
        """The generation finished."""


class StatsRecorder(Observer):
    """Counts drafts, fallbacks, cap hits, rollbacks and acceptance by position."""

    def __init__(self) -> None:
        self.stats = GenerationStats()

    def after_draft(self, step: DraftStep, fell_back: bool) -> None:
        self.stats.fallbacks += fell_back

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        s = self.stats
        s.draft_tokens += outcome.drafted
        s.accepted_draft_tokens += outcome.kept
        s.forced_verifications += outcome.ended == "cap"
        s.lookup_drafts += outcome.looked_up
        s.lookup_accepted += max(0, outcome.kept - (outcome.drafted - outcome.looked_up))  # sources draft last
        s.record_round(outcome.drafted, outcome.kept)
        if outcome.kept < outcome.drafted:
            s.rollbacks += 1
            s.rolled_back_tokens += outcome.drafted - outcome.kept
