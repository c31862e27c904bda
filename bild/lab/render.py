"""How the lab shows results: one table renderer, one figure saver, one flattener, and the per-category
table (Spec-Bench's) that `bench` prints and `compare` reprints from reports.

Tables are plain text, columns aligned, the first `left` columns left-aligned and the rest
right-aligned; a missing value is `-`. Figures are drawn with matplotlib's Agg backend and saved
through one guard, so an unwritable path or an unknown suffix is one clear line; each carries
`PLOT_MARK` in its metadata, which is how the output rule knows a plot is bild's to replace. `flatten` turns
nested dicts into one level of keys (W&B charts and setup comparisons both read that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bild.errors import BildError

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
PLOT_MARK = "bild: big-little-decoder"  # in every figure's metadata: only a plot bild wrote is ever replaced


def fmt(value: Any, spec: str = "") -> str:
    """`value` formatted by `spec`; `-` for None."""
    return "-" if value is None else format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Aligned plain-text columns under a rule."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if j < left else str(c).rjust(w)
                         for j, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def columns(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Dict rows as one table: every key any row has, in first-seen order, and each row's values under them
    (None where a row lacks the key, as a trial does a parameter it never searched)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return keys, [[r.get(k) for k in keys] for r in rows]


def category_table(categories: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Each method's speedup over its anchor (tau) per category, then overall, from a report's `categories`
    (read defensively: a method missing from a category shows `-`)."""
    names = list(categories)
    methods = list(dict.fromkeys(m for rows in categories.values() for m in rows))

    def cell(category: str, method: str) -> str:
        r = categories[category].get(method) or {}
        return f"{fmt(r.get('speedup_vs_large'), '.2f')}x ({fmt(r.get('mean_accepted_tokens'), '.2f')})"

    return table(["method", *names], [[m, *(cell(c, m) for c in names)] for m in methods])


def flatten(data: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (with `sep` between the levels)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, sep, f"{prefix}{key}{sep}")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def figure(path: str, draw: Callable[[Any], None], size: tuple[float, float] = (7.5, 4.5), panels: int = 1) -> None:
    """Draw with `draw(ax)` (or `draw(axes)`, side by side, for `panels` > 1) and save to `path` (PNG, PDF or SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=size, squeeze=False)
    try:
        draw(axes[0][0] if panels == 1 else list(axes[0]))
        for ax in axes[0]:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        key = {".png": "Software", ".pdf": "Creator", ".svg": "Creator"}[Path(path).suffix.lower()]
        fig.savefig(path, dpi=120, metadata={key: PLOT_MARK})
    except (OSError, ValueError) as e:
        raise BildError(f"cannot write the plot to {path!r}: {getattr(e, 'strerror', None) or e}; "
                        f"use a {', '.join(PLOT_SUFFIXES)} path in a writable folder") from None
    finally:
        plt.close(fig)
