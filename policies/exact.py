"""`exact`: greedy speculative decoding; the output equals the large model's greedy output.

Every draft is kept up to the first one the large model would not have chosen, whatever the
small model does; `fallback_threshold` only decides how long drafts get (the speed), never what is
generated. A draft below it is kept and verified at once with the pending ones (not thrown
away, as BiLD's fallback does): the verification pass grows little with one more token, and the
draft often survives. The default, 0.4, ties for the best modelled speed in a sweep on the tuning
prompts of docs/results.md (§3); `adaptive` picks the stopping point itself.
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import DraftStep, Policy, Verification
from bild.registry import register_policy
from policies.rules import low_confidence


@register_policy("exact")
class ExactPolicy(Policy):
    """Greedy speculative decoding: output identical to the large model alone."""

    fallback_threshold: float = Field(0.4, ge=0.0, le=1.0, description=(
        "verify once a draft's max probability is below this, the draft included (speed only; 0: draft up to "
        "the cap)"))

    def fallback(self, step: DraftStep) -> bool:
        return False

    def stop_drafting(self, step: DraftStep) -> bool:
        return low_confidence(step, self.fallback_threshold)

    def rollback(self, verification: Verification) -> int:
        return verification.first_mismatch
