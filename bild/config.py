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
