"""`bild`: the paper's two rules (Kim et al. 2023).

Fallback when the small model's top probability is below `fallback_threshold`; roll back at
the first pending draft whose cross-entropy under the large model, −log p_large(draft), exceeds
`rollback_threshold`. Positions where the large model's own argmax IS the draft are never
rollback points: replacing a token by itself is a no-op (the authors' code stops checking at
such a position; here checking continues to the next one).
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import DraftStep, Policy, Verification
from policies.registry import register_policy


@register_policy("bild")
class BiLDPolicy(Policy):
    """The paper's rules: fall back on low confidence, roll back on high cross-entropy."""

    fallback_threshold: float = Field(0.6, ge=0.0, le=1.0, description=(
        "fall back when the small model's max probability is below this (0: never, 1: always)"))
    rollback_threshold: float = Field(5.0, ge=0.0, le=20.0, description=(
        "roll back at the first draft with −log p_large(draft) above this (0: any disagreement)"))

    def fallback(self, step: DraftStep) -> bool:
        return self.fallback_threshold > 0 and step.max_prob < self.fallback_threshold

    def rollback(self, verification: Verification) -> int:
        if verification.first_mismatch == verification.n:  # the large model agrees everywhere
            return verification.n
        large = verification.large_logits.new_tensor(verification.large_tokens[: verification.n])
        bad = (verification.draft_nll > self.rollback_threshold) & (large != verification.draft_ids)
        return int(bad.int().argmax()) if bool(bad.any()) else verification.n
