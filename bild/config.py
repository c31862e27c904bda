"""Generation settings shared by every decoding method: the one place each is defined.

The command line builds its generation flags from these fields and YAML configs nest them under
`generation:`, so a setting's name, default, bounds and help exist here only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FastPath = Literal["auto", "off", "static", "graph", "compile"]


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, description="stop after this many new tokens")
    max_draft_tokens: int | None = Field(
        10, ge=1, description="force a large-model call after this many consecutive draft tokens (the paper's "
        "code uses 10); 'none' for no cap")
    stop_strings: list[str] = Field(default_factory=list, description="stop once one of these appears")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy; otherwise sample at this temperature")
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely tokens only")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="sample from the smallest set of this mass")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the sampling generator (none: random)")
    fast_path: FastPath = Field(
        "auto", description="off: dynamic cache, eager; static: static cache, eager; graph: static cache and CUDA "
        "graphs; compile: torch.compile(reduce-overhead); auto: graph on CUDA where the model allows, else off")

    @field_validator("max_draft_tokens", "top_k", "top_p", "seed", mode="before")
    @classmethod
    def _none_word(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("an empty stop string would stop at once; give at least one character")
        return value

    @model_validator(mode="after")
    def _sampling_options_need_sampling(self) -> GenerationConfig:
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise ValueError("top_k and top_p only apply when sampling: set temperature > 0, or drop them")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def draft_cap(self) -> int:
        """The cap on consecutive drafts as a number: no more than the new tokens a generation makes (no cap: every
        new token may be a draft; a cap of 100,000 means the same, and sizes nothing for 100,000)."""
        return min(self.max_draft_tokens or self.max_new_tokens, self.max_new_tokens)
