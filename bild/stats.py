"""Results and statistics of one generation, as pydantic models (they serialize to JSON as is).

Counts are exact. `small_passes`/`large_passes` count passes by how many tokens they fed (the
first pass, the prompt, is `*_prefill` tokens): what a cost model prices. Times come from
`time.perf_counter` around each model's passes, the host copy of the pass's summary included
(so on CUDA they include the wait for the GPU); the rest of `wall_seconds` is the engine's and
the policy's own time.
"""

from __future__ import annotations

from pydantic import BaseModel, computed_field

from bild.decoder import Decoder
from bild.observer import Observer
from bild.policy import DraftStep, Outcome, Verification


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
    small_prefill: int = 0  # tokens of each model's first pass
    large_prefill: int = 0
    small_passes: dict[int, int] = {}  # later passes: tokens fed -> how many such passes
    large_passes: dict[int, int] = {}
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

    def add_decoder(self, which: str, decoder: Decoder) -> None:
        """Copy one model's pass counts and time."""
        setattr(self, f"{which}_calls", decoder.calls)
        setattr(self, f"{which}_positions", decoder.positions)
        setattr(self, f"{which}_prefill", decoder.prefill)
        setattr(self, f"{which}_passes", dict(sorted(decoder.passes.items())))
        setattr(self, f"{which}_seconds", decoder.seconds)


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]  # new tokens only
    prompt_tokens: int
    stop_reason: str  # "eos", "max_new_tokens" or "stop_string"
    stats: GenerationStats


class StatsRecorder(Observer):
    """Counts drafts, fallbacks, cap hits and rollbacks (the engine attaches one to every generation)."""

    def __init__(self) -> None:
        self.stats = GenerationStats()

    def after_draft(self, step: DraftStep, fallback: bool) -> None:
        self.stats.fallbacks += fallback

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        s = self.stats
        s.draft_tokens += outcome.drafted
        s.accepted_draft_tokens += outcome.kept
        s.forced_verifications += outcome.reason == "cap"
        if outcome.kept < outcome.drafted:
            s.rollbacks += 1
            s.rolled_back_tokens += outcome.drafted - outcome.kept
