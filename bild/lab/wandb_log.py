"""A small Weights & Biases logger of our own (optuna-integration's W&B callback is deprecated).

wandb is imported lazily, only when a run is logged. `offline` (the default) needs no account
and no network: runs land in `<dir>/wandb/` and can be uploaded later with `wandb sync`;
`disabled` logs nothing; `online` needs `wandb login`. A W&B failure warns and never stops a
bench or a study.

Each run's config is the resolved setup (bild/lab/experiment.py: identity and context), its
summary the results; tables hold one row per method (bench) or per trial, and the samples.
Next to the offline run's files a person can read `bild-run.json` (name, group, config,
summary) without syncing anything.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bild.files import write_atomic
from bild.lab.options import WandbMode
from bild.lab.render import flatten

SAMPLE_COLUMNS = ("id", "method", "prompt", "text", "reference", "rank")
METHOD_COLUMNS = ("tokens_per_s", "speedup_vs_large", "modelled_speedup_vs_large", "efficiency", "efficiency_own",
                  "speedup_vs_large_hf", "chrf", "bleu", "rouge_l", "pass_at_1", "agreement_with_large",
                  "exact_match_with_large")
STAT_COLUMNS = ("fallback_rate", "rollback_rate", "acceptance_rate", "large_calls_per_token",
                "mean_accepted_tokens", "lookup_drafts", "lookup_accepted", "overhead_ms_per_token")
GROUP_COLUMNS = ("prompts", "speedup_vs_large", "modelled_speedup_vs_large", "mean_accepted_tokens",
                 "acceptance_rate", "large_calls_per_token")


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

    def root(self) -> str | None:
        """The folder to give wandb, which writes its runs into `<folder>/wandb/`: `--wandb-dir out/wandb` means
        the runs go in out/wandb itself (not out/wandb/wandb)."""
        if self.directory and Path(self.directory).name == "wandb":
            return str(Path(self.directory).parent)
        return self.directory

    def log_run(self, name: str, config: dict[str, Any], summary: dict[str, Any],
                samples: Sequence[dict[str, Any]] = (), tables: dict[str, tuple[list[str], list[list]]] | None = None,
                job_type: str = "bench") -> None:
        """One W&B run: `config`, `summary` (flattened for charts), a `samples` table and any extra tables."""
        if not self.enabled:
            return
        try:
            import wandb

            root = self.root()
            if root:
                Path(root).mkdir(parents=True, exist_ok=True)
            run = wandb.init(project=self.project, group=self.group, name=name, job_type=job_type,
                             config=config, mode=self.mode, dir=root, reinit="create_new",
                             settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
            try:
                run.summary.update({k: v for k, v in flatten(summary, "/").items() if v is not None})
                logged: dict[str, Any] = {}
                if samples:
                    logged["samples"] = wandb.Table(columns=list(SAMPLE_COLUMNS),
                                                    data=[[s.get(c) for c in SAMPLE_COLUMNS] for s in samples])
                for key, (columns, rows) in (tables or {}).items():
                    logged[key] = wandb.Table(columns=columns, data=rows)
                if logged:
                    run.log(logged)
                readable = {"name": name, "group": self.group, "job_type": job_type, "project": self.project,
                            "config": config, "summary": summary}
                write_atomic(Path(run.dir) / "bild-run.json", json.dumps(readable, indent=2, default=str) + "\n")
            finally:
                run.finish()
        except Exception as e:  # logging must never take a measurement down
            warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); results are still written locally",
                          stacklevel=2)

    def log_bench(self, name: str, config: dict[str, Any], report: dict[str, Any], examples: list[Any],
                  results: dict[str, list[Any]]) -> None:
        """A bench: a row per method (speed, quality, engine statistics) and the samples of every method."""
        rows = [[method, *(r.get(c) for c in METHOD_COLUMNS), *((r["stats"] or {}).get(c) for c in STAT_COLUMNS)]
                for method, r in report["methods"].items()]
        ranks = report.get("ranks") or []  # a bench across ranks: which rank measured each prompt
        samples = [{"id": m.id, "method": method, "prompt": e.prompt, "text": m.text, "reference": e.reference,
                    "rank": ranks[i] if ranks else 0}
                   for method, done in results.items() for i, (e, m) in enumerate(zip(examples, done, strict=False))]
        tables = {"methods": (["method", *METHOD_COLUMNS, *STAT_COLUMNS], rows)}
        if report.get("categories"):
            tables["categories"] = (["category", "method", *GROUP_COLUMNS],
                                    [[c, m, *(r.get(k) for k in GROUP_COLUMNS)] for c, methods
                                     in report["categories"].items() for m, r in methods.items()])
        if (split := report.get("without_loops")) and split["methods"]:  # lookup's honest test (summary.py)
            tables["without_loops"] = (["method", *GROUP_COLUMNS],
                                       [[m, *(r.get(k) for k in GROUP_COLUMNS)] for m, r in split["methods"].items()])
        self.log_run(name, config=config, job_type="bench", samples=samples,
                     summary={"methods": report["methods"], "memory": report.get("memory", {}),
                              "oracle": report.get("oracle") or {}, "notes": report.get("notes", []),
                              "looping_prompts": (report.get("without_loops") or {}).get("looping")},
                     tables=tables)
