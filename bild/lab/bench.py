"""`bild bench`: every method on the same prompts, side by side, in one process.

Measuring is bild/lab/measure.py's (warm-up, rotated order, repeats, medians); writing is
bild/lab/report.py's (incremental, resumable, locked). This module runs the two together and
presents the result: a table, a plot, and a report whose schema docs/bench.md describes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.errors import BildError
from bild.lab.identity import machine_info
from bild.lab.measure import Measurement, Method, Results, measure, peak_memory, summarize
from bild.lab.render import figure, fmt, table
from bild.lab.report import ReportWriter
from bild.lab.tasks import Example
from bild.pair import ModelPair
from bild.stats import GenerationStats

SCHEMA = "bild-bench/2"  # 1: flat small_*/large_* statistics, no anchors or fast paths per method


def notes_for(rows: dict[str, dict[str, Any]], dtype: str) -> list[str]:
    """What a reader of the table must know: missing anchors, precision, engine overhead."""
    notes = []
    unanchored = [name for name, r in rows.items() if r["anchor"] is None]
    if unanchored:
        notes.append(f"no `large` ran on the fast path of {', '.join(unanchored)}: their speedups and exact match "
                     "are empty (add large@fast_path=... for that path)")
    if dtype != "float32" and any(r["exact_match_with_large"] not in (None, 1.0) for r in rows.values()):
        notes.append(f"token identity is a float32 claim: in {dtype} a multi-token verification may round "
                     "differently from a one-token pass; see agreement and first_difference (the median token "
                     "where an output first parts from its anchor's)")
    if "large" in rows and "large-hf" in rows:
        ratio = rows["large"]["tokens_per_s"] / rows["large-hf"]["tokens_per_s"]
        if ratio < 0.95:
            notes.append(f"the engine's large-only decoding runs at {ratio:.2f}x transformers' generate: "
                         "the engine has per-token overhead to remove")
    return notes


def restore(records: list[dict[str, Any]]) -> Results:
    """The measurements of a resumed report's sample records, by method, in prompt order."""
    results: Results = {}
    for r in records:
        stats = GenerationStats(**r["stats"]) if r.get("stats") else None
        results.setdefault(r["method"], []).append(Measurement(
            id=r["id"], method=r["method"], seconds=r["seconds"], tokens=r["token_ids"], text=r["text"], stats=stats))
    return results


def run_bench(pair: ModelPair, examples: list[Example], methods: list[Method], config: GenerationConfig,
              repeats: int = 1, out: str | None = None, setup: dict[str, Any] | None = None,
              inputs: list[str | None] = (), overwrite: bool = False, progress: bool = True,
              costs: CostModel | None = None, context: dict[str, Any] | None = None,
              ) -> tuple[dict[str, Any], Results]:
    """Measure every method on every example; return (and write, as it goes) the report and the results.

    With a cost model, methods that ran on its fast path also get their modelled speedup over their
    anchor, and policies read it as `step.costs`.
    """
    if not examples:
        raise BildError("no prompts to bench: give at least one")
    setup = {**(setup or {}), "schema": SCHEMA, "methods": [m.name for m in methods], "n": len(examples),
             "repeats": repeats, "generation": config.model_dump(), "prompt_ids": [e.id for e in examples]}
    writer = ReportWriter(out, setup, inputs, overwrite)
    machine = machine_info(pair)
    report: dict[str, Any] = {"schema": SCHEMA, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine, "setup": setup, "context": context or {},
                              "methods": {}, "notes": [], "complete": False, "prompts_done": 0,
                              "cost_model": costs.model_dump() if costs else None}

    def record(i: int, results: Results) -> None:
        example = examples[i]
        for m in methods:
            x = results[m.name][i]
            writer.sample({"index": i, "id": example.id, "method": m.name, "prompt": example.prompt,
                           "reference": example.reference, "seconds": x.seconds, "text": x.text,
                           "token_ids": x.tokens, "stats": x.stats.model_dump() if x.stats else None})
        rows = summarize(methods, results, examples, costs)
        report.update(methods=rows, prompts_done=i + 1, memory=peak_memory(), notes=notes_for(rows, machine["dtype"]))
        writer.summary(report)

    done = restore(writer.done)
    if done:
        report.update(methods=summarize(methods, done, examples, costs), prompts_done=len(writer.done) // len(methods))
    writer.summary(report)  # from the start: a run killed during its warm-up still leaves its report
    try:
        results = measure(pair, examples, methods, config, repeats, done=done, on_prompt=record,
                          progress=progress, costs=costs)
        rows = summarize(methods, results, examples, costs)
        report.update(methods=rows, prompts_done=len(examples), memory=peak_memory(),
                      notes=notes_for(rows, machine["dtype"]), complete=True)
        writer.summary(report)
    finally:
        writer.close()
    return report, results


# --- presentation ------------------------------------------------------------------------------------

HEADERS = ["method", "tok/s", "x large", "modelled", "x large-hf", "chrF", "BLEU", "agree", "exact", "tau",
           "accept", "calls/tok", "fallback", "rollback"]


def table_row(name: str, r: dict[str, Any]) -> list[str]:
    st = r["stats"] or {}
    return [name, fmt(r["tokens_per_s"], ".1f"), fmt(r["speedup_vs_large"], ".2f"),
            fmt(r["modelled_speedup_vs_large"], ".2f"), fmt(r["speedup_vs_large_hf"], ".2f"),
            fmt(r["chrf"], ".1f"), fmt(r["bleu"], ".1f"), fmt(r["agreement_with_large"], ".3f"),
            fmt(r["exact_match_with_large"], ".2f"), fmt(st.get("mean_accepted_tokens"), ".2f"),
            fmt(st.get("acceptance_rate"), ".2f"), fmt(st.get("large_calls_per_token"), ".2f"),
            fmt(st.get("fallback_rate"), ".2f"), fmt(st.get("rollback_rate"), ".2f")]


def format_table(report: dict[str, Any]) -> str:
    m, setup = report["machine"], report["setup"]
    head = (f"{setup.get('n')} prompts, {setup['generation']['max_new_tokens']} new tokens, "
            f"{m['device']} {m['dtype']}, torch {m['torch']}, transformers {m['transformers']}")
    mem = report.get("memory", {})
    tail = [f"peak RSS {mem['peak_rss_mib']:.0f} MiB"] if mem else []
    body = table(HEADERS, [table_row(name, r) for name, r in report["methods"].items()])
    return "\n".join([head, body, *tail, *(f"note: {n}" for n in report.get("notes", []))])


def plot(report: dict[str, Any], path: str, title: str) -> None:
    """Quality (chrF, else agreement with large) against speedup over each method's anchor, one point per method."""
    rows = report["methods"]
    metric = "chrf" if all(r["chrf"] is not None for r in rows.values()) else "agreement_with_large"
    speed = "speedup_vs_large" if all(r["speedup_vs_large"] is not None for r in rows.values()) else "tokens_per_s"

    def draw(ax: Any) -> None:
        markers = "osD^v<>pPX*h"
        for i, (name, r) in enumerate(rows.items()):  # a legend, not labels: nearby points would overlap
            ax.scatter(r[speed], r[metric], s=40, marker=markers[i % len(markers)], label=name)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_xlabel(speed.replace("_", " "))
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{title}: quality vs speed", fontsize=9)

    figure(path, draw)
