"""Results and statistics of one generation, as pydantic models (they serialize to JSON as is).

Counts are exact; times come from `time.perf_counter` around each model's forward pass and
the decision on its output (which reads the output back, so on CUDA it includes the wait for
the GPU).
"""

from __future__ import annotations

from pydantic import BaseModel, computed_field


class GenerationStats(BaseModel):
    new_tokens: int = 0
    draft_tokens: int = 0  # proposed by the small model and kept pending
    accepted_draft_tokens: int = 0  # of those, kept after verification
    fallbacks: int = 0  # the policy handed control to the large model
    forced_verifications: int = 0  # the cap on consecutive drafts was hit
    rollbacks: int = 0  # verifications that discarded at least one draft
    rolled_back_tokens: int = 0
    small_calls: int = 0
    large_calls: int = 0
    small_positions: int = 0  # tokens fed to the small model (prompt included)
    large_positions: int = 0
    small_seconds: float = 0.0
    large_seconds: float = 0.0
    wall_seconds: float = 0.0

    @computed_field
    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @computed_field
    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else None

    @computed_field
    @property
    def large_calls_per_token(self) -> float | None:
        return self.large_calls / self.new_tokens if self.new_tokens else None


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]  # new tokens only
    prompt_tokens: int
    stop_reason: str  # "eos", "max_new_tokens" or "stop_string"
    stats: GenerationStats
