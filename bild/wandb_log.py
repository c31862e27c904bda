"""A small Weights & Biases logger of our own (optuna-integration's W&B callback is deprecated).

wandb is imported lazily, only when a run is logged. `offline` (the default) needs no account
and no network: runs land in `<dir>/wandb/` and can be uploaded later with `wandb sync`;
`disabled` logs nothing; `online` needs `wandb login`. A W&B failure warns and never stops a
bench or a study.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

WandbMode = Literal["offline", "online", "disabled"]
SAMPLE_COLUMNS = ("id", "method", "prompt", "text", "reference")


class WandbLogger:
    def __init__(self, mode: WandbMode = "offline", project: str = "bild", group: str | None = None,
                 directory: str | Path | None = None) -> None:
        self.mode = mode
        self.project = project
        self.group = group
        self.directory = str(directory) if directory else None

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def log_run(self, name: str, config: dict[str, Any], summary: dict[str, Any],
                samples: Sequence[dict[str, Any]] = (), tables: dict[str, tuple[list[str], list[list]]] | None = None,
                job_type: str = "bench") -> None:
        """One W&B run: `config`, a flat `summary`, a `samples` table and any extra tables."""
        if not self.enabled:
            return
        try:
            import wandb

            if self.directory:
                Path(self.directory).mkdir(parents=True, exist_ok=True)
            run = wandb.init(project=self.project, group=self.group, name=name, job_type=job_type,
                             config=config, mode=self.mode, dir=self.directory, reinit="create_new",
                             settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
            try:
                run.summary.update(flatten(summary))
                logged: dict[str, Any] = {}
                if samples:
                    logged["samples"] = wandb.Table(columns=list(SAMPLE_COLUMNS),
                                                    data=[[s.get(c) for c in SAMPLE_COLUMNS] for s in samples])
                for key, (columns, rows) in (tables or {}).items():
                    logged[key] = wandb.Table(columns=columns, data=rows)
                if logged:
                    run.log(logged)
            finally:
                run.finish()
        except Exception as e:  # logging must never take a measurement down
            warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); results are still written locally",
                          stacklevel=2)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a/b": 1}`; W&B charts flat keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, name + "/")
        elif value is not None:
            flat[name] = value
    return flat
