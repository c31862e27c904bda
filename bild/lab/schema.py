"""The bench report, typed once: what `bild bench --json` writes and what `bild compare`, W&B and
docs/bench.md read.

The bench assembles its report as it measures (bench.py, summary.py, oracle.py) and checks it
against `BenchReport` every time it writes one (`checked`): a field added to a report without
being added here is a warning there and fails the tests, so the schema cannot drift from what is
written. Reading is
lenient: every field has a default and unknown ones are kept, so `bild compare` opens reports of
earlier versions (`bild-bench/1`: flat statistics; reports from before the oracle or sources).
A test checks docs/bench.md's schema block against these models, both ways.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("bild")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class MethodRow(Lenient):
    """One method's row: speed, speedups, quality, agreement, the engine's statistics, the limit."""

    tokens_per_s: float | None = None
    new_tokens: int | None = None
    seconds: float | None = None
    anchor: str | None = None  # the `large` method it is compared with (null: none benched on its fast path)
    speedup_vs_large: float | None = None
    modelled_speedup_vs_large: float | None = None
    speedup_vs_large_hf: float | None = None
    chrf: float | None = None
    bleu: float | None = None
    rouge_l: float | None = None
    accuracy: float | None = None
    pass_at_1: float | None = None
    agreement_with_large: float | None = None
    exact_match_with_large: float | None = None
    first_difference: float | None = None
    params: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    fast_paths: dict[str, str] | None = None
    peak_gpu_mib: float | None = None
    load: dict[str, Any] | None = None  # others_cpu, busy, worst (bild/lab/load.py)
    stats: dict[str, Any] | None = None  # summed GenerationStats with its derived rates
    model_fit: dict[str, Any] | None = None  # ratio, flagged, tolerance
    efficiency: float | None = None  # against the oracle of the small model's drafts
    gap: dict[str, float] | None = None  # where its time above the oracle goes, shares
    gap_seconds: dict[str, float] | None = None
    sources: list[str] | None = None  # the draft sources it used
    oracle_own: float | None = None  # the oracle of those sources, modelled speedup
    efficiency_own: float | None = None
    per_prompt_efficiency: list[float | None] | None = None

    @property
    def flags(self) -> tuple[str, str]:
        """`?` when its modelled figures do not fit its run, `*` when it was measured on a busy machine."""
        fit = self.model_fit if isinstance(self.model_fit, dict) else {}
        load = self.load if isinstance(self.load, dict) else {}
        return "?" if fit.get("flagged") else "", "*" if load.get("busy") else ""

    def stat(self, key: str) -> float | None:
        """A statistic of either schema (τ was `mean_accepted_draft_length` + 1 in bild-bench/1)."""
        stats = self.stats or {}
        if key == "mean_accepted_tokens" and key not in stats and stats.get("mean_accepted_draft_length") is not None:
            return 1 + stats["mean_accepted_draft_length"]
        value = stats.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Oracle(Lenient):
    """The limit (bild/lab/oracle.py): the oracle, its references, and the small model's calibration."""

    anchor: str | None = None
    prompts: int | None = None
    cap: int | None = None
    modelled_speedup: float | None = None  # the oracle of the small model's drafts
    sources: dict[str, float | None] | None = None  # the oracle per set of sources (bigram: any lookup's bound)
    repetition: float | None = None  # of the large output's tokens, those continuing an earlier 4-gram
    best_fixed: dict[str, Any] | None = None  # gamma, modelled_speedup
    ideal: dict[str, Any] | None = None  # the confidence ideal: modelled_speedup, efficiency
    ideal_ladder: dict[str, dict[str, Any] | None] | None = None  # the ideal per signal (confidence first)
    closed_form: dict[str, Any] | None = None  # alpha, ratio, best_gamma, speedup, bound
    agreement: float | None = None
    per_prompt_oracle_speedup: list[float | None] | None = None
    calibration: list[dict[str, Any]] | None = None  # max_prob, drafts, acceptance


class LoopSplit(Lenient):
    """The methods on the prompts whose `reference` output does not end in a loop."""

    reference: str | None = None
    looping: int | None = None
    prompts: int | None = None
    methods: dict[str, dict[str, Any]] = {}


class BenchReport(Lenient):
    schema_: str | None = Field(None, alias="schema")  # bild-bench/2
    date: str | None = None
    machine: dict[str, Any] = {}
    machines: list[dict[str, Any]] | None = None  # across ranks: each rank's machine
    ranks: list[int] | None = None  # across ranks: which rank measured each prompt
    placement: dict[str, Any] = {}
    setup: dict[str, Any]  # what a resumed bench must match
    context: dict[str, Any] = {}  # what it ran on, for people
    cost_model: dict[str, Any] | None = None
    methods: dict[str, MethodRow]
    categories: dict[str, Any] | None = None  # category -> method -> speedup, tau, ...
    without_loops: LoopSplit | None = None
    oracle: Oracle | None = None
    memory: dict[str, Any] = {}
    notes: list[str] = []
    prompts_done: int | None = None
    complete: bool = True


def undeclared(report: BenchReport) -> list[str]:
    """The fields a report holds that the models do not declare: a writer that drifted from the schema."""
    found = [f"report.{k}" for k in report.model_extra or {}]
    found += [f"methods.{name}.{k}" for name, row in report.methods.items() for k in row.model_extra or {}]
    if report.oracle is not None:
        found += [f"oracle.{k}" for k in report.oracle.model_extra or {}]
    if report.without_loops is not None:
        found += [f"without_loops.{k}" for k in report.without_loops.model_extra or {}]
    return found


def checked(report: dict[str, Any]) -> dict[str, Any]:
    """`report` as the bench writes it, with a warning (never an error: the run's figures are written all the
    same) for any field the schema does not declare."""
    extra = undeclared(BenchReport.model_validate(report))
    if extra:
        log.warning("bild: the bench report holds fields bild/lab/schema.py does not declare (%s): a bug, please "
                    "report it", ", ".join(extra))
    return report
