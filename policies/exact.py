"""`exact`: greedy speculative decoding; the output equals the large model's greedy output.

Every draft is kept up to the first one the large model would not have chosen, whatever the
small model does; `verify_below` only decides how long drafts get (the speed), never what is
generated: once a draft's max probability is below it, that draft is kept and verified at once
with the pending ones (not thrown away, as BiLD's fallback does): the verification pass grows
little with one more token, and the draft often survives. The default, 0.4, ties for the best
modelled speed in a sweep on the tuning prompts of docs/results.md (§3); `adaptive` picks the
stopping point itself. The parameter was called `fallback_threshold` before 0.3, and that name
is still accepted, with a deprecation warning: it never caused a fallback.

`lookup_min` adds context lookup in front of the small model (policies/lookup.py): before each
small pass, when the last `lookup_min` or more tokens occurred earlier in the prompt or output,
what followed them is drafted instead, and verified at once. Drafts never change the output,
only how fast it comes. The default, 2, was the fastest (modelled) of 0–3 on the tuning prompts
(docs/results.md §11); `exact@lookup_min=0` is the small model alone, as before 0.4.
"""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, model_validator

from bild.policy import DraftStep, Verification
from bild.registry import register_policy
from policies.lookup import LookupFirst
from policies.rules import low_confidence


@register_policy("exact")
class ExactPolicy(LookupFirst):
    """Greedy speculative decoding: output identical to the large model alone."""

    verify_below: float = Field(0.4, ge=0.0, le=1.0, description=(
        "verify once a draft's max probability is below this, the draft included (speed only; 0: draft up to "
        "the cap)"))

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "fallback_threshold" in data and "verify_below" not in data:
            warnings.warn("exact's `fallback_threshold` is now `verify_below` (it never made the policy fall back)",
                          DeprecationWarning, stacklevel=2)
            data = {("verify_below" if k == "fallback_threshold" else k): v for k, v in data.items()}
        return data

    trust_agreement: bool = Field(False, description=(
        "draft on past a low-confidence draft when context lookup's guess for it is the same token (speed only)"))

    def fallback(self, step: DraftStep) -> bool:
        return False

    def stop_drafting(self, step: DraftStep) -> bool:
        return low_confidence(step, self.verify_below) and not (self.trust_agreement and step.agrees)

    def rollback(self, verification: Verification) -> int:
        return verification.first_mismatch
