"""A custom BiLD policy: fall back when the small model's two best tokens are close."""

from pydantic import Field

from bild import DraftStep, Policy, Verification


class Top2GapPolicy(Policy):
    """Fall back when p(top-1) / p(top-2) is small; keep drafts the large model ranks high."""

    min_ratio: float = Field(3.0, ge=1.0, le=100.0, description="fall back below this top-1/top-2 ratio")
    max_rank: int = Field(1, ge=1, le=5, description="keep a draft while it is in the large model's top max_rank")

    def fallback(self, step: DraftStep) -> bool:
        top2 = step.probs.topk(2).values
        return float(top2[0]) < self.min_ratio * float(top2[1])

    def rollback(self, verification: Verification) -> int:
        top = verification.large_logits[: verification.n].topk(self.max_rank, dim=-1).indices  # [n, max_rank]
        ok = (top == verification.draft_ids[:, None]).any(dim=-1)  # [n]
        return verification.n if bool(ok.all()) else int((~ok).int().argmax())
