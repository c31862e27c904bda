"""`bild`: the paper's fallback rule (Kim et al. 2023) with a composable rollback rule.

Fallback when the small model's top probability is below `fallback_threshold`; by default roll
back with the paper's cross-entropy rule (see policies/rules.py for it and the alternatives).
"""

from __future__ import annotations

from bild.policy import DraftStep
from bild.registry import register_policy
from policies.rules import FallbackThreshold, RulePolicy, low_confidence


@register_policy("bild")
class BiLDPolicy(RulePolicy):
    """The paper's rules: fall back on low confidence, roll back on high cross-entropy."""

    fallback_threshold: FallbackThreshold = 0.6

    def fallback(self, step: DraftStep) -> bool:
        return low_confidence(step, self.fallback_threshold)
