"""Generation settings shared by every decoding method."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, description="stop after this many new tokens")
    max_draft_tokens: int | None = Field(
        10, ge=1, description="force a large-model call after this many consecutive draft "
        "tokens (the paper's code uses 10); None for no cap")
    stop_strings: list[str] = Field(default_factory=list, description="stop once one appears")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy; otherwise sample at this temperature")
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely tokens only")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="sample from the smallest set of this mass")
    seed: int | None = Field(None, description="seed of the sampling generator (None: random)")
