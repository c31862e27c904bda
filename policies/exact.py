"""`exact`: greedy speculative decoding; the output equals the large model's greedy output.

Every draft is kept up to the first one the large model would not have chosen, whatever the
small model does; `fallback_threshold` only decides how long drafts get (the speed), never
what is generated.
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import DraftStep, Policy, Verification
from bild.registry import register_policy
from policies.rules import low_confidence


@register_policy("exact")
class ExactPolicy(Policy):
    """Greedy speculative decoding: output identical to the large model alone."""

    fallback_threshold: float = Field(0.0, ge=0.0, le=1.0, description=(
        "stop drafting when the small model's max probability is below this (speed only)"))

    def fallback(self, step: DraftStep) -> bool:
        return low_confidence(step, self.fallback_threshold)

    def rollback(self, verification: Verification) -> int:
        return verification.first_mismatch
