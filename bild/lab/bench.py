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
from bild.lab.measure import (
    Measurement,
    Method,
    Results,
    fast_path_of,
    machine_info,
    measure,
    peak_memory,
    summarize,
)
from bild.lab.report import ReportWriter
from bild.lab.tasks import Example
from bild.pair import ModelPair
from bild.stats import GenerationStats


def notes_for(rows: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
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

    With a cost model, methods that ran on its fast path also get their modelled speedup over `large`.
    """
    if not examples:
        raise BildError("no prompts to bench: give at least one")
    fast_paths = {m.name: fast_path_of(pair, m, config) for m in methods}
    setup = {**(setup or {}), "methods": [m.name for m in methods], "n": len(examples), "repeats": repeats,
             "generation": config.model_dump(), "prompt_ids": [e.id for e in examples]}
    writer = ReportWriter(out, setup, inputs, overwrite)
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(pair), "setup": setup, "context": context or {},
                              "methods": {}, "notes": [],
                              "complete": False, "prompts_done": 0, "fast_paths": fast_paths,
                              "cost_model": costs.model_dump() if costs else None}

    def record(i: int, results: Results) -> None:
        example = examples[i]
        for m in methods:
            x = results[m.name][i]
            writer.sample({"index": i, "id": example.id, "method": m.name, "prompt": example.prompt,
                           "reference": example.reference, "seconds": x.seconds, "text": x.text,
                           "token_ids": x.tokens, "stats": x.stats.model_dump() if x.stats else None})
        report.update(methods=summarize(methods, results, examples, costs, fast_paths), prompts_done=i + 1,
                      memory=peak_memory())
        writer.summary(report)

    try:
        results = measure(pair, examples, methods, config, repeats, done=restore(writer.done), on_prompt=record,
                          progress=progress)
        rows = summarize(methods, results, examples, costs, fast_paths)
        report.update(methods=rows, prompts_done=len(examples), memory=peak_memory(), notes=notes_for(rows),
                      complete=True)
        writer.summary(report)
    finally:
        writer.close()
    return report, results


# --- presentation ------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    headers = ["method", "tok/s", "x large", "modelled", "x large-hf", "chrF", "BLEU", "agree", "exact",
               "fallback", "rollback", "acc.len", "calls/tok"]
    rows = []
    for name, r in report["methods"].items():
        st = r["stats"] or {}
        rows.append([name, _fmt(r["tokens_per_s"], ".1f"), _fmt(r["speedup_vs_large"], ".2f"),
                     _fmt(r["modelled_speedup_vs_large"], ".2f"), _fmt(r["speedup_vs_large_hf"], ".2f"),
                     _fmt(r["chrf"], ".1f"), _fmt(r["bleu"], ".1f"),
                     _fmt(r["agreement_with_large"], ".3f"), _fmt(r["exact_match_with_large"], ".2f"),
                     _fmt(st.get("fallback_rate"), ".2f"), _fmt(st.get("rollback_rate"), ".2f"),
                     _fmt(st.get("mean_accepted_draft_length"), ".2f"), _fmt(st.get("large_calls_per_token"), ".2f")])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths,
                                                                                               strict=True)))

    m, setup = report["machine"], report["setup"]
    head = (f"{setup.get('n')} prompts, {setup['generation']['max_new_tokens']} new tokens, "
            f"{m['device']} {m['dtype']}, torch {m['torch']}, transformers {m['transformers']}")
    mem = report.get("memory", {})
    tail = [f"peak RSS {mem['peak_rss_mib']:.0f} MiB"] if mem else []
    return "\n".join([head, line(headers), line(["-" * w for w in widths]), *map(line, rows), *tail,
                      *(f"note: {n}" for n in report.get("notes", []))])


def plot(report: dict[str, Any], path: str) -> None:
    """Quality (chrF, else agreement with large) against speedup over `large`, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["methods"]
    metric = "chrf" if all(r["chrf"] is not None for r in rows.values()) else "agreement_with_large"
    speed = "speedup_vs_large" if all(r["speedup_vs_large"] is not None for r in rows.values()) else "tokens_per_s"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>pPX*h"
    for i, (name, r) in enumerate(rows.items()):  # a legend, not labels: nearby points would overlap
        ax.scatter(r[speed], r[metric], s=40, marker=markers[i % len(markers)], label=name)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(speed.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{report['setup'].get('large', '')}: quality vs speed", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise BildError(f"cannot write the plot to {path!r}: {getattr(e, 'strerror', None) or e}; "
                        "use a .png, .pdf or .svg path in a writable folder") from None
    finally:
        plt.close(fig)
