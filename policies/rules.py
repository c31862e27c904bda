"""Rollback rules, the base class that makes them composable with any fallback rule, and the
fallback signals shared by several policies.

A `RulePolicy` is a fallback rule (its subclass's `fallback` and parameters) plus one of these
rollback rules, chosen by the `rollback_rule` parameter. The deterministic rules are public
per-draft predicates (`exact_accepts`, `nll_accepts`; `RulePolicy.accepts` picks the policy's
own), so a policy can ask what its rule would do with any token at any position, and
`first_rejected` turns a predicate into a rollback decision:

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

from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field

from bild.policy import DraftStep, Policy, Verdict, Verification

# Field types a subclass can reuse to change a default in one line: `rollback_rule: RollbackRule = "exact"`.
RollbackRule = Annotated[Literal["nll", "exact", "rejection"], Field(
    description="nll: the paper's threshold; exact: first disagreement; rejection: speculative sampling",
    json_schema_extra={"sampling_only": ["rejection"]})]  # under greedy decoding rejection is exact
RollbackThreshold = Annotated[float, Field(
    ge=0.0, le=30.0, description="nll rule: roll back at the first draft with −log p_large(draft) above this "
    "(0: any disagreement)", json_schema_extra={"applies_when": {"rollback_rule": ["nll"]}})]
FallbackThreshold = Annotated[float, Field(
    ge=0.0, le=1.0, description="fall back when the small model's max probability is below this (0: never, 1: always)")]

Accepts = Callable[[Verification, int, int], bool]  # (verification, position, token) -> kept?


def exact_accepts(verification: Verification, i: int, token: int) -> bool:
    """Whether the large model would have chosen `token` itself at position i (row i of its pass)."""
    return token == verification.large_tokens[i]


def nll_accepts(verification: Verification, i: int, token: int, threshold: float) -> bool:
    """The paper's rule at position i: `token` is kept unless −log p_large(token) exceeds `threshold`; the large
    model's own argmax is always kept (replacing a token by itself is a no-op)."""
    if token == verification.large_tokens[i]:
        return True
    if i < verification.n and token == verification.draft_tokens[i]:
        nll = verification.draft_nll[i]  # computed with the pass, on the device
    else:
        nll = -float(torch.log_softmax(verification.large_logits[i].float(), dim=-1)[token])
    return nll <= threshold


def first_rejected(verification: Verification, accepts: Accepts) -> int:
    """The number of drafts kept: up to the first one `accepts` refuses (all n if none)."""
    for i, token in enumerate(verification.draft_tokens):
        if not accepts(verification, i, token):
            return i
    return verification.n


def nll_rollback(verification: Verification, threshold: float) -> int:
    """The first draft whose NLL under the large model exceeds `threshold` and that is not its argmax."""
    return first_rejected(verification, lambda v, i, token: nll_accepts(v, i, token, threshold))


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

    rollback_rule: RollbackRule = "nll"
    rollback_threshold: RollbackThreshold = 5.0

    def accepts(self, verification: Verification, i: int, token: int) -> bool | None:
        """Whether this policy's rollback rule keeps `token` at position i; None where the rule draws
        (speculative sampling)."""
        if self.rollback_rule == "nll":
            return nll_accepts(verification, i, token, self.rollback_threshold)
        if self.rollback_rule == "exact" or verification.greedy:
            return exact_accepts(verification, i, token)
        return None

    def rollback(self, verification: Verification) -> int | Verdict:
        if self.rollback_rule == "rejection" and not verification.greedy:
            return rejection_rollback(verification)
        return first_rejected(verification, self.accepts)


def low_confidence(step: DraftStep, threshold: float) -> bool:
    """The paper's fallback signal: the small model's max probability is below `threshold` (0: never)."""
    return threshold > 0 and step.max_prob < threshold


def top_margin(probs: torch.Tensor, k: int) -> float:
    """Top-1 probability minus the sum of the next k."""
    top = torch.topk(probs, k + 1).values
    return float(top[0] - top[1:].sum())
