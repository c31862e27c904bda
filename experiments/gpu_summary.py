"""Markdown summary of a `gpu_check.sh` run: the bench table, per-pass costs, the targets of issue 9.

Usage: python experiments/gpu_summary.py OUT_DIR > OUT_DIR/summary.md (reads what exists there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value: object, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def bench_table(report: dict) -> list[str]:
    rows = report["methods"]
    eager = rows.get("large@fast_path=off", {}).get("tokens_per_s")
    assisted = rows.get("hf-assisted", {}).get("tokens_per_s")
    lines = ["| method | tokens/s | × large eager | × hf-assisted | chrF | exact match | engine ms/token | "
             "peak GPU MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        st = r.get("stats") or {}
        lines.append(f"| `{name}` | {fmt(r['tokens_per_s'], '.1f')} | "
                     f"{fmt(r['tokens_per_s'] / eager if eager else None)} | "
                     f"{fmt(r['tokens_per_s'] / assisted if assisted else None)} | {fmt(r['chrf'], '.1f')} | "
                     f"{fmt(r['exact_match_with_large'])} | {fmt(st.get('overhead_ms_per_token'), '.3f')} | "
                     f"{fmt(r.get('peak_gpu_mib'), '.0f')} |")
    return lines


def cost_table(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("costs-*.json")):
        costs = json.loads(path.read_text())
        large = " ".join(f"{1000 * s:.2f}" for s in costs["large"]["passes"])
        small = " ".join(f"{1000 * s:.2f}" for s in costs["small"]["passes"])
        most = len(costs["large"]["passes"])
        lines += [f"- `{path.stem}`: small pass (1, 2 tokens) {small} ms; large pass (1..{most} tokens) {large} ms; "
                  f"engine {1000 * costs['overhead_per_pass']:.3f} ms per pass"]
    return lines


def targets(report: dict) -> list[str]:
    rows = report["methods"]
    fast = next((k.split("=")[1] for k in rows if k.startswith("large@fast_path=") and not k.endswith("=off")), None)
    tps = {k: v["tokens_per_s"] for k, v in rows.items()}
    checks = []

    def check(label: str, value: float | None, goal: float) -> None:
        if value is not None:
            checks.append(f"- {label}: {value:.2f} (goal ≥ {goal}) {'met' if value >= goal else '**missed**'}")

    eager = tps.get("large@fast_path=off")
    fast_large = tps.get(f"large@fast_path={fast}")
    best_exact = max((v for k, v in tps.items() if k.startswith(f"exact@fast_path={fast}")), default=None)
    check(f"`large` {fast} / eager", fast_large / eager if fast_large and eager else None, 3.0)
    check(f"best `exact` {fast} / `large` {fast}", best_exact / fast_large if best_exact and fast_large else None, 1.5)
    check(f"best `exact` {fast} / `hf-assisted`", best_exact / tps["hf-assisted"] if best_exact and
          tps.get("hf-assisted") else None, 2.0)
    overheads = [(k, (v.get("stats") or {}).get("overhead_ms_per_token")) for k, v in rows.items()
                 if f"fast_path={fast}" in k]
    worst = max((o for _, o in overheads if o is not None), default=None)
    if worst is not None:
        checks.append(f"- engine and policy time per token, worst {fast} method: {worst:.3f} ms (goal ≤ 0.1) "
                      f"{'met' if worst <= 0.1 else '**missed**'}")
    return checks


def main(out: Path) -> None:
    env = (out / "environment.txt").read_text().strip() if (out / "environment.txt").exists() else "?"
    print(f"# GPU check\n\n{env}\n")
    if (out / "cuda_tests.txt").exists():
        print(f"CUDA tests: `{(out / 'cuda_tests.txt').read_text().strip().splitlines()[-1]}`\n")
    if (out / "bench.json").exists():
        report = json.loads((out / "bench.json").read_text())
        print(f"Bench: {report['prompts_done']} prompts of experiments/data/pycode_eval.jsonl, 64 new tokens, "
              f"{report['machine']['dtype']}, complete: {report['complete']}\n")
        print("\n".join(bench_table(report)) + "\n")
        print("Targets (issue 9):\n" + "\n".join(targets(report)) + "\n")
    costs = cost_table(out)
    if costs:
        print("Per-pass costs (median of 20, after a 128-token context):\n" + "\n".join(costs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
