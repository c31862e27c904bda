"""`bild compare A.json B.json ...`: bench reports side by side, with the setup differences that matter.

Each report's methods become rows labelled by the report; the setups are compared after their
defaults were resolved (the report holds resolved values: a device `None` that became `cpu` is
`cpu` in both), so what differs is what was really set differently. `--plot` draws every
report's methods in one speed-quality figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bild.errors import BildError

MACHINE_KEYS = ("device", "dtype", "gpu", "processor", "threads", "torch", "transformers", "bild")


def load_report(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BildError(f"report {path!r} does not exist: write one with `bild bench --json {path}`") from None
    except (OSError, ValueError) as e:
        raise BildError(f"{path!r} is not a bench report ({type(e).__name__})") from None
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict) or "setup" not in report:
        raise BildError(f"{path!r} is not a bench report of `bild bench --json` (no 'methods' and 'setup')")
    return report


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(reports: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Setting -> its value in each report, for the settings that differ."""
    views = [flat({**r["setup"], "machine": {k: v for k, v in r.get("machine", {}).items() if k in MACHINE_KEYS}})
             for r in reports]
    keys = sorted(set().union(*views) - {"methods", "prompt_ids"})
    return {k: [v.get(k) for v in views] for k in keys
            if len({json.dumps(v.get(k), sort_keys=True) for v in views}) > 1}


def labels_for(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(Path(p).with_suffix("")) for p in paths]


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def compare_table(reports: list[dict[str, Any]], labels: list[str]) -> str:
    headers = ["report", "method", "tok/s", "x large", "modelled", "chrF", "exact", "calls/tok"]
    rows = []
    for label, report in zip(labels, reports, strict=True):
        for name, r in report["methods"].items():
            rows.append([label, name, fmt(r["tokens_per_s"], ".1f"), fmt(r.get("speedup_vs_large"), ".2f"),
                         fmt(r.get("modelled_speedup_vs_large"), ".2f"), fmt(r.get("chrf"), ".1f"),
                         fmt(r.get("exact_match_with_large"), ".2f"),
                         fmt((r.get("stats") or {}).get("large_calls_per_token"), ".2f")])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(c.ljust(w) if j < 2 else c.rjust(w)  # noqa: E731
                                   for j, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def compare(paths: list[str], plot: str | None = None) -> str:
    if len(paths) < 2:
        raise BildError("give at least two bench reports to compare")
    reports, labels = [load_report(p) for p in paths], labels_for(paths)
    diff = differences(reports)
    lines = [compare_table(reports, labels), ""]
    if diff:
        lines.append("setup differences:")
        lines += [f"  {key}: {' | '.join(json.dumps(v) for v in values)}" for key, values in diff.items()]
    else:
        lines.append("setup differences: none")
    if plot:
        draw(reports, labels, plot)
    return "\n".join(lines)


def draw(reports: list[dict[str, Any]], labels: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>pPX*h"
    for i, (label, report) in enumerate(zip(labels, reports, strict=True)):
        rows = report["methods"].values()
        metric = "chrf" if all(r.get("chrf") is not None for r in rows) else "agreement_with_large"
        ax.scatter([r.get("speedup_vs_large") or 0 for r in rows], [r.get(metric) or 0 for r in rows], s=36,
                   marker=markers[i % len(markers)], label=label)
        for name, r in report["methods"].items():
            ax.annotate(name, (r.get("speedup_vs_large") or 0, r.get(metric) or 0), fontsize=6, alpha=0.7)
    ax.set_xlabel("speedup vs large")
    ax.set_ylabel("quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise BildError(f"cannot write the plot to {path!r}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)
