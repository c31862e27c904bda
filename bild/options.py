"""Options of `bild bench` and `bild tune`, as pydantic models shared by the CLI and YAML configs.

The command line fills these models from flags; `bild run CONFIG.yaml` fills them from a file
(`command: bench` or `command: tune` plus the same fields, `params`/`space` as mappings). Either
way the validated model is what runs and what is logged with the results.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bild.bench import DEFAULT_METHODS
from bild.wandb_log import WandbMode


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the pair
    pair: str | None = None
    small: str | None = None
    large: str | None = None
    device: str | None = None
    dtype: str | None = None
    # the prompts
    prompts: str | None = None
    task: str | None = None
    n: int | None = Field(None, ge=1)
    # generation
    max_new_tokens: int = Field(64, ge=1)
    max_draft_tokens: int | None = Field(10, ge=1)
    stop: list[str] = []
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    # measuring and logging
    repeats: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    wandb_mode: WandbMode = "offline"
    wandb_project: str = "bild"
    wandb_dir: str | None = None


class BenchOptions(Options):
    command: Literal["bench"] = "bench"
    methods: str = DEFAULT_METHODS
    params: dict[str, Any] = {}
    json_out: str | None = None
    plot: str | None = None


class TuneOptions(Options):
    command: Literal["tune"] = "tune"
    policy: str
    trials: int = Field(20, ge=1)
    study: str | None = None
    storage: str = "sqlite:///bild-tune.db"
    objectives: str = "speedup,quality"
    metric: Literal["chrf", "bleu", "rouge_l", "agreement"] = "chrf"
    max_quality_drop: float | None = Field(None, ge=0)
    timeout: float | None = Field(None, gt=0)
    space: dict[str, str] = {}
    out_dir: str = "."
    heartbeat: int = Field(30, ge=1)
    wandb_per: Literal["trial", "study"] = "trial"


Experiment = Annotated[BenchOptions | TuneOptions, Field(discriminator="command")]
