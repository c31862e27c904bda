"""`bild compare A.json B.json ...`: bench reports side by side, with what makes them comparable or not.

Each report's methods become rows labelled by the report. Above the table: whether the reports'
modelled speedups were priced by one cost model (if not, by how much the small/large ratio
differs: compare the counts that need no pricing instead, large calls per token and τ). Below
it: the setup differences, compared after the reports resolved their defaults (a device `None`
that became `cpu` is `cpu` in both), so what differs was really set differently. A report cut
short (`complete: false`) is marked with the prompts it holds. Reports of the previous schema
(`bild-bench/1`, flat statistics) are read too. `--plot` draws every report's methods in one
speed-quality figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bild.errors import BildError, describe_errors
from bild.lab.render import category_table, figure, flatten, fmt, table
from bild.lab.schema import BenchReport as Report

MACHINE_KEYS = ("device", "dtype", "gpu", "processor", "threads", "torch", "transformers", "bild")


def load_report(path: str) -> Report:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BildError(f"report {path!r} does not exist: write one with `bild bench --json {path}`") from None
    except IsADirectoryError:
        raise BildError(f"report {path!r} is a folder: give the JSON file of `bild bench --json`") from None
    except (OSError, ValueError) as e:
        raise BildError(f"{path!r} is not a bench report ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise BildError(f"{path!r} is not a bench report of `bild bench --json` (not a JSON object)")
    try:
        return Report.model_validate(data)
    except ValidationError as e:
        problem = describe_errors(e, where=lambda loc: f"field {'.'.join(map(str, loc))!r}", first=True)
        raise BildError(f"{path!r} is not a bench report of `bild bench --json`: {problem}") from None


def differences(reports: list[Report]) -> dict[str, list[Any]]:
    """Setting -> its value in each report, for the settings that differ."""
    views = [flatten({**r.setup, "machine": {k: v for k, v in r.machine.items() if k in MACHINE_KEYS}})
             for r in reports]
    keys = sorted(set().union(*views) - {"methods", "prompt_ids"})
    return {k: [v.get(k) for v in views] for k in keys
            if len({json.dumps(v.get(k), sort_keys=True) for v in views}) > 1}


def pricing(reports: list[Report], labels: list[str]) -> str:
    """One line: whether the modelled speedups were priced alike."""
    def priced(r: Report) -> tuple[str, float] | None:
        costs = r.cost_model or {}
        try:
            key = json.dumps({k: costs[k] for k in ("small", "large", "overhead_per_pass")}, sort_keys=True)
            return key, costs["small"]["passes"][0] / costs["large"]["passes"][0]
        except (KeyError, IndexError, TypeError, ZeroDivisionError):
            return None

    found = [priced(r) for r in reports]
    if all(f is None for f in found):
        return "cost models: none (no modelled speedups)"
    if None not in found and len({f[0] for f in found}) == 1:
        return f"cost models: one for all reports (small/large pass {found[0][1]:.3f}): modelled speedups compare"
    ratios = ", ".join(f"{label} {'-' if f is None else f'{f[1]:.3f}'}" for label, f in zip(labels, found, strict=True))
    return (f"cost models DIFFER (small/large pass: {ratios}): modelled speedups are priced differently; compare "
            "calls/tok and tau, which need no pricing, or bench both with one --cost-model")


def labels_for(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(Path(p).with_suffix("")) for p in paths]


def compare_table(reports: list[Report], labels: list[str]) -> str:
    headers = ["report", "method", "tok/s", "x large", "modelled", "eff", "eff own", "chrF", "exact", "calls/tok",
               "tau", "prompts"]
    rows = []
    for label, report in zip(labels, reports, strict=True):
        done = report.prompts_done if report.prompts_done is not None else report.setup.get("n")
        whole = f"{done}" if report.complete else f"{done} of {report.setup.get('n', '?')} (partial)"
        for name, r in report.methods.items():
            doubt, busy = r.flags
            rows.append([label, name + busy, fmt(r.tokens_per_s, ".1f"), fmt(r.speedup_vs_large, ".2f"),
                         fmt(r.modelled_speedup_vs_large, ".2f") + doubt, fmt(r.efficiency, ".2f") + doubt,
                         fmt(r.efficiency_own, ".2f"), fmt(r.chrf, ".1f"),
                         fmt(r.exact_match_with_large, ".2f"), fmt(r.stat("large_calls_per_token"), ".2f"),
                         fmt(r.stat("mean_accepted_tokens"), ".2f"), whole])
    return table(headers, rows, left=2)


def compare(paths: list[str], plot: str | None = None) -> str:
    if len(paths) < 2:
        raise BildError("give at least two bench reports to compare")
    reports, labels = [load_report(p) for p in paths], labels_for(paths)
    limits = [f"{label} {r.oracle.modelled_speedup:.2f}x" + (f" (repetition {r.oracle.repetition:.2f})"
                                                             if r.oracle.repetition is not None else "")
              for label, r in zip(labels, reports, strict=True)
              if r.oracle is not None and r.oracle.modelled_speedup is not None]
    lines = [pricing(reports, labels), *([f"oracle (modelled): {', '.join(limits)}"] if limits else []),
             compare_table(reports, labels), ""]
    partial = [label for label, r in zip(labels, reports, strict=True) if not r.complete]
    if partial:
        lines.insert(1, f"partial reports (interrupted; rerun their bench to finish): {', '.join(partial)}")
    for label, report in zip(labels, reports, strict=True):
        lines += category_lines(label, report)
    diff = differences(reports)
    if diff:
        lines.append("setup differences:")
        lines += [f"  {key}: {' | '.join(json.dumps(v) for v in values)}" for key, values in diff.items()]
    else:
        lines.append("setup differences: none")
    if plot:
        draw(reports, labels, plot)
    return "\n".join(lines)


def category_lines(label: str, report: Report) -> list[str]:
    """A report's speedup (tau) per category, Spec-Bench style, when its prompts had categories."""
    if not isinstance(report.categories, dict) or not report.categories:
        return []
    well_formed = all(isinstance(rows, dict) and all(isinstance(r, dict) for r in rows.values())
                      for rows in report.categories.values())
    if not well_formed:  # a hand-edited or foreign report: its other figures still compare
        return [f"{label}: its 'categories' are not per-category tables of methods; left out", ""]
    return [f"{label} by category: speedup (tau)", category_table(report.categories), ""]


def draw(reports: list[Report], labels: list[str], path: str) -> None:
    def plot(ax: Any) -> None:
        markers = "osD^v<>pPX*h"
        for i, (label, report) in enumerate(zip(labels, reports, strict=True)):
            rows = report.methods
            metric = "chrf" if all(r.chrf is not None for r in rows.values()) else "agreement_with_large"
            points = {name: (r.speedup_vs_large or 0, getattr(r, metric) or 0) for name, r in rows.items()}
            ax.scatter([x for x, _ in points.values()], [y for _, y in points.values()], s=36,
                       marker=markers[i % len(markers)], label=label)
            for name, xy in points.items():
                ax.annotate(name, xy, fontsize=6, alpha=0.7)
        ax.set_xlabel("speedup vs large")
        ax.set_ylabel("quality")
        ax.legend(fontsize=8)

    figure(path, plot)
