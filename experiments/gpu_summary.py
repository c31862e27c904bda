"""Markdown summary of a `gpu_check.sh` run: each step's time, environment, smoke, per-pass costs with the
draft/verify cost ratio, the benches (measured and modelled speedups, the oracle and each lossless method's
efficiency, the best lossless method, host time per pass and per token), the CUDA tests and the targets of
issue 9, each marked met or missed. Every piece is optional: a missing or broken file is one line saying so.

Usage: python experiments/gpu_summary.py WORK_DIR (prints Markdown).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


def fmt(value: object, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def environment(out: Path) -> list[str]:
    env = read_json(out / "environment.json")
    return [f"GPU: {env.get('gpu')}; python {env.get('python')}, torch {env.get('torch')}, transformers "
            f"{env.get('transformers')}"]


def smoke(out: Path) -> list[str]:
    s = read_json(out / "smoke.json")
    rp = s.get("reduced_precision", {})
    return [f"Smoke: one generation in {rp.get('dtype')} on `{s.get('fast_path')}` "
            f"({rp.get('tokens')} tokens, large model on {rp.get('large', {}).get('fast_path')}, "
            f"{rp.get('large', {}).get('graphs_captured')}/{rp.get('large', {}).get('graph_buckets')} buckets "
            f"captured); fp32 `exact` == `large` on the same path: {s.get('fp32_exact_equals_large')}"] + [
        f"Engine's own host time, passes replayed (`{policy}`): {fmt(e.get('ms_per_draft'), '.3f')} ms per draft, "
        f"{fmt(e.get('ms_per_verification'), '.3f')} ms per verification, {fmt(e.get('ms_per_token'), '.3f')} ms per "
        f"token; {fmt(e.get('ops_per_pass'), '.1f')} device operations of its own per pass"
        for policy, e in s.get("engine", {}).items()]


def bench_table(report: dict) -> list[str]:
    rows = report.get("methods", {})
    assisted = rows.get("hf-assisted", {}).get("tokens_per_s")
    lines = [f"{report.get('prompts_done')} prompts of pycode_eval.jsonl, 64 new tokens, "
             f"{report.get('machine', {}).get('dtype')}, complete: {report.get('complete')}", "",
             "| method | fast paths | tokens/s | × its anchor | modelled | × hf-assisted | exact match | first diff "
             "| τ | engine ms/token | peak GPU MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        st = r.get("stats") or {}
        paths = ", ".join(f"{k} {v}" for k, v in (r.get("fast_paths") or {}).items()) or "transformers"
        lines.append(f"| `{name}` | {paths} | {fmt(r.get('tokens_per_s'), '.1f')} | {fmt(r.get('speedup_vs_large'))} "
                     f"(`{r.get('anchor')}`) | {fmt(r.get('modelled_speedup_vs_large'))} | "
                     f"{fmt(r['tokens_per_s'] / assisted if assisted else None)} | "
                     f"{fmt(r.get('exact_match_with_large'))} | {fmt(r.get('first_difference'), '.0f')} | "
                     f"{fmt(st.get('mean_accepted_tokens'))} | {fmt(st.get('overhead_ms_per_token'), '.3f')} | "
                     f"{fmt(r.get('peak_gpu_mib'), '.0f')} |")
    lines += limit_lines(report)
    return lines + [f"- note: {n}" for n in report.get("notes", [])]


def limit_lines(report: dict) -> list[str]:
    """The oracle, each lossless method's efficiency, the best lossless method, host time per pass."""
    rows, oracle = report.get("methods", {}), report.get("oracle") or {}
    lines = ["", f"Oracle (modelled): {fmt(oracle.get('modelled_speedup'))}x over large; by sources "
                 f"{ {k: round(v, 2) for k, v in (oracle.get('sources') or {}).items() if v} }; repetition "
                 f"{fmt(oracle.get('repetition'))}"]
    lossless = {k: r for k, r in rows.items() if r.get("exact_match_with_large") == 1.0 and r.get("stats")
                and k.split("@")[0] not in ("large", "small")}
    for name, r in lossless.items():
        st = r["stats"]
        large = st.get("large") or {}
        per_pass = 1000 * large["seconds"] / large["calls"] if large.get("calls") else None
        lines.append(f"- `{name}`: efficiency {fmt(r.get('efficiency'))} (own sources {fmt(r.get('efficiency_own'))}), "
                     f"measured {fmt(r.get('speedup_vs_large'))}x, modelled {fmt(r.get('modelled_speedup_vs_large'))}x"
                     f" (fit {fmt((r.get('model_fit') or {}).get('ratio'))}); host time per large pass "
                     f"{fmt(per_pass, '.3f')} ms (sync included), engine {fmt(st.get('overhead_ms_per_token'), '.3f')}"
                     " ms per token; GPU event times not recorded")
    if lossless:
        best = max(lossless, key=lambda k: lossless[k].get("speedup_vs_large") or 0)
        lines.append(f"Best lossless method (measured): `{best}` at {fmt(lossless[best].get('speedup_vs_large'))}x")
    return lines


def steps(out: Path) -> list[str]:
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().strip().splitlines()[1:]]
    lines = ["| step | limit s | took s | exit |", "|---|---|---|---|"]
    lines += [f"| {name} | {limit} | {took} | {rc}{' (timed out)' if rc == '124' else ''} |"
              for name, limit, took, rc in rows]
    return ["Steps:", "", *lines]


def costs(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("costs-*.json")):
        c = read_json(path)
        large = " ".join(f"{1000 * s:.2f}" for s in c["large"]["passes"])
        small = " ".join(f"{1000 * s:.2f}" for s in c["small"]["passes"])
        ratio = c["small"]["passes"][0] / c["large"]["passes"][0]
        noise = c.get("noise", {})
        lines.append(f"- `{path.stem}`: small pass (1.. tokens) {small} ms; large pass (1..{len(c['large']['passes'])}"
                     f" tokens) {large} ms; draft/verify cost ratio {ratio:.3f}; engine "
                     f"{1000 * c['overhead_per_pass']:.3f} ms per pass; spread at most "
                     f"{fmt(max((noise.get('spread') or {}).values(), default=None), '.2f')}, problems "
                     f"{noise.get('problems') or 'none'}")
    if not lines:
        raise FileNotFoundError("no costs-*.json")
    return ["Per-pass costs (median of 10, after a 128-token context):", *lines]


def targets(report: dict) -> list[str]:
    rows = report["methods"]
    tps = {k: v["tokens_per_s"] for k, v in rows.items()}
    fast = (rows.get("large", {}).get("fast_paths") or {}).get("large", "?").split(" ")[0]
    checks = []

    def check(label: str, value: float | None, goal: float, at_most: bool = False) -> None:
        if value is None:
            checks.append(f"- {label}: not measured")
        else:
            met = value <= goal if at_most else value >= goal
            checks.append(f"- {label}: {value:.3f} (goal {'≤' if at_most else '≥'} {goal}) "
                          f"{'met' if met else '**missed**'}")

    eager, large, exact, assisted = (tps.get(k) for k in ("large@fast_path=off", "large", "exact", "hf-assisted"))
    check(f"`large` on {fast} / `large` eager", large / eager if large and eager else None, 3.0)
    check(f"`exact` on {fast} / `large` on {fast}", exact / large if exact and large else None, 1.5)
    check(f"`exact` on {fast} / `hf-assisted`", exact / assisted if exact and assisted else None, 2.0)
    overheads = [(rows[k].get("stats") or {}).get("overhead_ms_per_token") for k in ("exact", "adaptive") if k in rows]
    overheads = [o for o in overheads if o is not None]
    check("engine and policy ms per token (worst of exact, adaptive)", max(overheads) if overheads else None, 0.1,
          at_most=True)
    return ["Targets (issue 9):", *checks]


def cuda_tests(out: Path) -> list[str]:
    lines = (out / "cuda-tests.txt").read_text().strip().splitlines()
    if not lines:
        raise ValueError("empty test log")
    return [f"CUDA tests: `{lines[-1]}`"]


def section(title: str, make: Callable[[], list[str]]) -> list[str]:
    try:
        return [*make(), ""]
    except Exception as e:  # a missing or cut-off file: say so and go on
        return [f"{title}: not available ({type(e).__name__}: {e})", ""]


def main(out: Path) -> None:
    lines = ["# GPU check", ""]
    lines += section("steps", lambda: steps(out))
    lines += section("environment", lambda: environment(out))
    lines += section("smoke", lambda: smoke(out))
    lines += section("costs", lambda: costs(out))
    for name in ("bench", "bench-compile"):
        lines += section(name, lambda name=name: [f"## {name}", "", *bench_table(read_json(out / f"{name}.json"))])
    lines += section("targets", lambda: targets(read_json(out / "bench.json")))
    lines += section("CUDA tests", lambda: cuda_tests(out))
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
