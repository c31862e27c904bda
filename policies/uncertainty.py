"""Fallback rules from the small model's uncertainty: `entropy` and `topk-margin`.

Both take any rollback rule (policies/rules.py).
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import DraftStep
from bild.registry import register_policy
from policies.rules import RulePolicy, top_margin


@register_policy("entropy")
class EntropyPolicy(RulePolicy):
    """Fall back when the small model's distribution is too spread out (high entropy)."""

    entropy_threshold: float = Field(2.0, ge=0.0, le=12.0, description=(
        "fall back when the entropy (nats) of the small model's distribution exceeds this"))

    def fallback(self, step: DraftStep) -> bool:
        return step.entropy > self.entropy_threshold


@register_policy("topk-margin")
class TopKMarginPolicy(RulePolicy):
    """Fall back when the small model's top choice barely beats the runners-up."""

    margin: float = Field(0.2, ge=0.0, le=1.0, description=(
        "fall back when top-1 probability minus the sum of the next k is below this (0: never, 1: always)"))
    k: int = Field(1, ge=1, le=8, description="how many runners-up the top-1 probability is compared with")

    def fallback(self, step: DraftStep) -> bool:
        return top_margin(step.probs, self.k) < self.margin
