"""Rollback rules, the base class that makes them composable with any fallback rule, and the
fallback signals shared by several policies.

A `RulePolicy` is a fallback rule (its subclass's `fallback` and parameters) plus one of these
rollback rules, chosen by the `rollback_rule` parameter:

- `nll`: the paper's. Roll back at the first draft whose −log p_large(draft) exceeds
  `rollback_threshold`, skipping drafts that are the large model's own argmax (replacing a token
  by itself is a no-op; the authors' code stops examining drafts there instead).
- `exact`: keep drafts up to the first one the large model would not choose (greedy
  speculative decoding; under sampling, compared with the large model's argmax).
- `rejection`: speculative sampling (Leviathan et al. 2023): draft i survives with probability
  min(1, p_large/p_small) of its token; the first rejected one is replaced by a draw from
  norm(max(0, p_large − p_small)), so the output follows the large model's distribution
  exactly. Under greedy decoding it is `exact`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bild.policy import DraftStep, Policy, Verdict, Verification


def nll_rollback(verification: Verification, threshold: float) -> int:
    """The first draft whose NLL under the large model exceeds `threshold` and that is not its argmax."""
    for i, (nll, draft, large) in enumerate(zip(verification.draft_nll, verification.draft_tokens,
                                                verification.large_tokens, strict=False)):
        if nll > threshold and draft != large:
            return i
    return verification.n


def rejection_rollback(verification: Verification) -> int | Verdict:
    if verification.greedy:
        return verification.first_mismatch
    n, ids = verification.n, verification.draft_ids[:, None]
    p_small = verification.draft_probs.gather(-1, ids).squeeze(-1)  # [n]
    p_large = verification.large_probs[:n].gather(-1, ids).squeeze(-1)  # [n]
    accept = verification.sampler.uniform(n, p_small.device) * p_small <= p_large  # u < p_L / p_S
    if bool(accept.all()):
        return n
    kept = int((~accept).int().argmax())
    residual = (verification.large_probs[kept] - verification.draft_probs[kept]).clamp_min(0)
    total = residual.sum()
    # p_L == p_S where the draft was drawn: rejection has probability 0; guard the rounding case
    return Verdict(kept, residual / total if total > 0 else verification.large_probs[kept])


class RulePolicy(Policy):
    """A fallback rule (the subclass) plus a rollback rule chosen by `rollback_rule`."""

    rollback_rule: Literal["nll", "exact", "rejection"] = Field(
        "nll", description="nll: the paper's threshold; exact: first disagreement; rejection: speculative sampling",
        json_schema_extra={"sampling_only": ["rejection"]})  # under greedy decoding rejection is exact
    rollback_threshold: float = Field(5.0, ge=0.0, le=30.0, description=(
        "nll rule: roll back at the first draft with −log p_large(draft) above this (0: any disagreement)"),
        json_schema_extra={"applies_when": {"rollback_rule": ["nll"]}})

    def rollback(self, verification: Verification) -> int | Verdict:
        if self.rollback_rule == "nll":
            return nll_rollback(verification, self.rollback_threshold)
        if self.rollback_rule == "exact":
            return verification.first_mismatch
        return rejection_rollback(verification)


def low_confidence(step: DraftStep, threshold: float) -> bool:
    """The paper's fallback signal: the small model's max probability is below `threshold` (0: never)."""
    return threshold > 0 and step.max_prob < threshold


def top_margin(probs: torch.Tensor, k: int) -> float:
    """Top-1 probability minus the sum of the next k."""
    top = torch.topk(probs, k + 1).values
    return float(top[0] - top[1:].sum())
