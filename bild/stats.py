"""Results and statistics of one generation, as pydantic models (they serialize to JSON as is).

Counts are exact. Each model's `ModelStats` counts its passes by how many tokens they fed (the
first pass of a generation, the prompt, is `prefill` tokens): what a cost model prices. It also
says which fast path the passes ran on and, for a padded one, how many of its buckets were
captured. Times come from `time.perf_counter` around each model's passes, the host copy of the
pass's summary included (so on CUDA they include the wait for the GPU); the rest of
`wall_seconds` is the engine's and the policy's own time.

Acceptance, in the field's terms (Spec-Bench, vLLM): a round is the drafts between two
verifications. `judged_by_position[i]` counts drafts at position i + 1 of a round that the large
model judged (every earlier draft of the round survived), `accepted_by_position[i]` those that
survived; `accepted_lengths` is the histogram of drafts kept per verification. Statistics add
up (`a + b`): a bench's totals are the sum of its generations'.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, computed_field


def _add(a: Any, b: Any) -> Any:
    """Counts add; histograms add key by key, per-position lists position by position."""
    if isinstance(a, dict):
        return {k: _add(a.get(k, 0), b.get(k, 0)) for k in sorted({*a, *b})}
    if isinstance(a, list):
        longest = max(len(a), len(b))
        return [_add((a + [0] * longest)[i], (b + [0] * longest)[i]) for i in range(longest)]
    return a + b


class ModelStats(BaseModel):
    """One model's passes in a generation (or in several, added up)."""

    calls: int = 0
    positions: int = 0  # tokens fed, prompts included
    prefill: int = 0  # tokens of the first passes (one per generation that ran this model)
    passes: dict[int, int] = {}  # later passes: tokens fed -> how many such passes
    seconds: float = 0.0
    fast_path: str | None = None  # what its passes ran on (`mixed` in a sum over several)
    graphs_captured: int = 0  # padded fast paths: buckets captured or compiled (the rest ran eagerly)
    graph_buckets: int = 0

    @property
    def prefills(self) -> int:
        """How many first passes (generations) these counts hold."""
        return self.calls - sum(self.passes.values())

    def __add__(self, other: ModelStats) -> ModelStats:
        counts = {k: _add(getattr(self, k), getattr(other, k)) for k in ("calls", "positions", "prefill", "passes",
                                                                         "seconds")}
        paths = {p for p in (self.fast_path, other.fast_path) if p}
        return ModelStats(**counts, fast_path=paths.pop() if len(paths) == 1 else "mixed" if paths else None,
                          graphs_captured=max(self.graphs_captured, other.graphs_captured),
                          graph_buckets=max(self.graph_buckets, other.graph_buckets))


class GenerationStats(BaseModel):
    new_tokens: int = 0
    draft_tokens: int = 0  # proposed by the small model and kept pending
    accepted_draft_tokens: int = 0  # of those, kept after verification
    fallbacks: int = 0  # the policy handed control to the large model
    forced_verifications: int = 0  # the cap on consecutive drafts was hit
    lookup_drafts: int = 0  # of the drafts, those a draft source proposed (context lookup)
    lookup_accepted: int = 0  # of those, kept after verification
    rollbacks: int = 0  # verifications that discarded at least one draft
    rolled_back_tokens: int = 0
    judged_by_position: list[int] = []  # [i]: drafts at position i + 1 of a round that the large model judged
    accepted_by_position: list[int] = []  # [i]: of those, the ones that survived
    accepted_lengths: dict[int, int] = {}  # drafts kept by a verification -> how many verifications
    small: ModelStats = Field(default_factory=ModelStats)
    large: ModelStats = Field(default_factory=ModelStats)
    wall_seconds: float = 0.0

    @computed_field
    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @computed_field
    @property
    def acceptance_rate(self) -> float | None:
        """Drafts kept over drafts verified (the field's draft acceptance rate)."""
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else None

    @computed_field
    @property
    def large_calls_per_token(self) -> float | None:
        return self.large.calls / self.new_tokens if self.new_tokens else None

    @computed_field
    @property
    def mean_accepted_tokens(self) -> float | None:
        """Tokens per verification, the large model's own included (Spec-Bench's τ): 1 + kept / verifications."""
        verifications = sum(self.accepted_lengths.values())
        return 1 + self.accepted_draft_tokens / verifications if verifications else None

    @computed_field
    @property
    def acceptance_by_position(self) -> list[float | None]:
        """P(the draft at position i + 1 of a round survives | the earlier ones did), as vLLM reports it."""
        return [a / j if j else None for a, j in zip(self.accepted_by_position, self.judged_by_position, strict=False)]

    def record_round(self, drafted: int, kept: int) -> None:
        """Count one verification that kept `kept` of `drafted` drafts."""
        for counts, upto in ((self.judged_by_position, min(drafted, kept + 1)), (self.accepted_by_position, kept)):
            counts.extend([0] * (upto - len(counts)))
            for i in range(upto):
                counts[i] += 1
        self.accepted_lengths[kept] = self.accepted_lengths.get(kept, 0) + 1

    def __add__(self, other: GenerationStats) -> GenerationStats:
        fields = {k: _add(getattr(self, k), getattr(other, k)) for k in type(self).model_fields
                  if k not in ("small", "large")}
        return GenerationStats(**fields, small=self.small + other.small, large=self.large + other.large)


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]  # new tokens only
    prompt_tokens: int
    stop_reason: str  # "eos", "max_new_tokens" or "stop_string"
    stats: GenerationStats
    rounds: list[tuple[int, int, bool, int]] = []  # bild.schedule.Round per verification: the schedule that ran
