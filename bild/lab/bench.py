"""`bild bench`: every method on the same prompts, side by side, in one process.

Measuring is bild/lab/measure.py's (warm-up, rotated order, repeats, medians); the rows
bild/lab/summary.py's; writing bild/lab/report.py's (incremental, resumable, locked). This
module runs them together and presents the result: a table, a plot, and a report whose schema
docs/bench.md describes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.lab.identity import machine_info
from bild.lab.measure import Measurement, Results, measure
from bild.lab.methods import Method
from bild.lab.oracle import limit, teach
from bild.lab.render import category_table, figure, fmt, table
from bild.lab.report import ReportWriter
from bild.lab.sandbox import check_answers
from bild.lab.schema import MethodRow
from bild.lab.summary import by_category, peak_memory, priced_by, summarize, without_loops
from bild.lab.tasks import Example
from bild.lab.workload import Workload
from bild.stats import GenerationStats

log = logging.getLogger("bild")
SCHEMA = "bild-bench/2"  # 1: flat small_*/large_* statistics, no anchors or fast paths per method
FIT_TOLERANCE = 0.15  # a modelled speedup further than this from the measured one is flagged


def fit_cause(name: str, row: dict[str, Any], costs: CostModel) -> str:
    """The likely reason a method's modelled speedup is far from its measured one."""
    load = row.get("load") or {}
    if load.get("busy"):
        return f"the machine was busy while it ran (other processes took {100 * load['others_cpu']:.0f}% of the CPU)"
    if costs.noise.get("problems"):
        return f"the cost model's calibration was noisy ({costs.noise['problems'][0]})"
    if name.split("@")[0] == "hf-assisted":
        return "transformers' own per-round work, which the cost model (this engine's passes) leaves out"
    return (f"the cost model was measured under other conditions ({costs.source or 'a file'}, "
            f"{costs.created or 'undated'})")


def notes_for(rows: dict[str, dict[str, Any]], dtype: str, costs: CostModel | None = None) -> list[str]:
    """What a reader of the table must know: missing anchors, precision, engine overhead, modelled figures that do
    not describe their run, a busy machine."""
    notes = []
    flagged = [name for name, r in rows.items() if (r.get("model_fit") or {}).get("flagged")]
    for name in flagged:
        fit = rows[name]["model_fit"]
        notes.append(f"{name}: modelled {rows[name]['modelled_speedup_vs_large']:.2f}x vs measured "
                     f"{rows[name]['speedup_vs_large']:.2f}x ({100 * (fit['ratio'] - 1):+.0f}%, beyond "
                     f"{100 * fit['tolerance']:.0f}%): likely {fit_cause(name, rows[name], costs)}; its modelled "
                     "figures and efficiency (marked ?) do not describe this run: rerun with --recalibrate on a "
                     "quiet machine")
    busy = [name for name, r in rows.items() if (r.get("load") or {}).get("busy")]
    if busy:
        notes.append(f"measured while other processes took more than a quarter of the CPU: {', '.join(busy)} "
                     "(their times are slower than this machine's)")
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
            id=r["id"], method=r["method"], seconds=r["seconds"], tokens=r["token_ids"], text=r["text"], stats=stats,
            rounds=r.get("rounds"), turns=r.get("turns") or [len(r["token_ids"])], teacher=r.get("teacher"),
            tests=r.get("tests")))
    return results


# --- the limit: an oracle that knows which drafts the large model accepts ---------------------------------


def oracle_anchor(methods: list[Method], results: Results, costs: CostModel | None, config: GenerationConfig
                  ) -> str | None:
    """The `large` method the oracle follows: the first one the cost model prices (greedy decoding only)."""
    if costs is None or not config.greedy:
        return None
    return next((m.name for m in methods if m.baseline == "large" and priced_by(costs, results[m.name])), None)


def add_limit(report: dict[str, Any], methods: list[Method], results: Results, costs: CostModel | None,
              config: GenerationConfig) -> None:
    """The oracle's summary in `report["oracle"]`, and `efficiency` and `gap` in each lossless method's row."""
    anchor = oracle_anchor(methods, results, costs, config)
    if anchor is None:
        why = ("sampling: the oracle is greedy only" if not config.greedy else
               "no cost model to price schedules with" if costs is None else
               "no `large` method ran on the cost model's fast path: add `large` to --methods")
        report["oracle"] = None
        report["notes"].append(f"no oracle ({why}); the rest of the bench stands")
        return
    lossless = {m.name: (results[m.name], m.config(config).draft_cap(), m.sources) for m in methods
                if m.policy is not None and priced_by(costs, results[m.name])
                and [x.tokens for x in results[m.name]] == [x.tokens for x in results[anchor]]}
    summary, rows = limit(results[anchor], lossless, config.draft_cap(), costs)
    report["oracle"] = {"anchor": anchor, **summary}
    for name, row in rows.items():
        report["methods"][name].update(efficiency=row["efficiency"], gap=row["gap_share"],
                                       gap_seconds=row["gap_seconds"], sources=row["sources"],
                                       oracle_own=row["oracle_own"], efficiency_own=row["efficiency_own"],
                                       per_prompt_efficiency=row["per_prompt_efficiency"])


def bench_setup(work: Workload, methods: list[Method], setup: dict[str, Any] | None, execute_code: bool
                ) -> dict[str, Any]:
    """What a bench's report records as its setup: a resumed report must have the same."""
    return {**(setup or {}), "schema": SCHEMA, "methods": [m.name for m in methods], "n": len(work.examples),
            "repeats": work.repeats, "generation": work.config.model_dump(),
            "prompt_ids": [e.id for e in work.examples], "chat": work.chat, "system": work.system,
            "execute_code": execute_code,
            "policy_code": {m.name: m.origin.get("code") for m in methods if m.origin}}  # an edited policy reruns


def run_tests(example: Example, methods: list[Method], results: Results, i: int) -> None:
    """Each method's output on prompt `i` against the example's tests (pass@1)."""
    outcomes = check_answers([(example, results[m.name][i].text) for m in methods])
    for m, outcome in zip(methods, outcomes, strict=True):
        results[m.name][i].tests = outcome.status
        if outcome.status in ("timeout", "killed"):
            log.info("bild bench: %s on %s: the tests were %s (%s)", m.name, example.id,
                     "stopped" if outcome.status == "timeout" else "killed", outcome.detail)


class PromptDone:
    """What happens as each prompt's measurements end: the oracle's teacher along the anchor's output, the tests,
    the samples and the report written, so a killed bench loses at most the prompt in flight."""

    def __init__(self, work: Workload, methods: list[Method], writer: ReportWriter, report: dict[str, Any],
                 execute_code: bool) -> None:
        self.work, self.methods, self.writer, self.report, self.execute_code = (
            work, methods, writer, report, execute_code)

    def __call__(self, i: int, results: Results) -> None:
        work, example = self.work, self.work.examples[i]
        anchor = oracle_anchor(self.methods, results, work.costs, work.config)
        if anchor is not None:
            x = results[anchor][i]
            x.teacher = teach(work.pair, x.prompts, x.tokens, x.turns)
        if self.execute_code:
            run_tests(example, self.methods, results, i)
        for m in self.methods:
            x = results[m.name][i]
            self.writer.sample({"index": i, "id": example.id, "method": m.name, "prompt": example.prompt,
                                "reference": example.reference, "seconds": x.seconds, "text": x.text,
                                "token_ids": x.tokens, "stats": x.stats.model_dump() if x.stats else None,
                                "rounds": x.rounds, "turns": x.turns, "teacher": x.teacher, "tests": x.tests})
        fill(self.report, self.methods, results, work.examples, work.costs, work.config, i + 1)
        self.writer.summary(self.report)


def run_bench(work: Workload, methods: list[Method], out: str | None = None, setup: dict[str, Any] | None = None,
              inputs: list[str | None] = (), overwrite: bool = False, context: dict[str, Any] | None = None,
              execute_code: bool = False) -> tuple[dict[str, Any], Results]:
    """Measure every method on every example of `work`; return (and write, as it goes) the report and the results.

    With a cost model, methods that ran on its fast path also get their modelled speedup over their
    anchor, and policies read it as `step.costs`. `execute_code`: run each output against its
    example's tests (bild/lab/sandbox.py), for pass@1.
    """
    examples, config, costs = work.examples, work.config, work.costs
    setup = bench_setup(work, methods, setup, execute_code)
    writer = ReportWriter(out, setup, inputs, overwrite)
    report = new_report(machine_info(work.pair), setup, context, costs, work.pair.placement())
    done = restore(writer.done)
    if done:
        fill(report, methods, done, examples, costs, config, len(writer.done) // len(methods))
        log.info("bild bench: resuming %s: %d of %d prompts were measured before", out, report["prompts_done"],
                 len(examples))
    writer.summary(report)  # from the start: a run killed during its warm-up still leaves its report
    try:
        results = measure(work, methods, done=done,
                          on_prompt=PromptDone(work, methods, writer, report, execute_code))
        fill(report, methods, results, examples, costs, config, len(examples))
        report["complete"] = True
        writer.summary(report)
    finally:
        writer.close()
    return report, results


def new_report(machine: dict[str, Any], setup: dict[str, Any], context: dict[str, Any] | None,
               costs: CostModel | None, placement: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
            "placement": placement, "setup": setup, "context": context or {}, "methods": {}, "notes": [],
            "complete": False, "prompts_done": 0, "cost_model": costs.model_dump() if costs else None}


def fill(report: dict[str, Any], methods: list[Method], results: Results, examples: list[Example],
         costs: CostModel | None, config: GenerationConfig, done: int) -> None:
    """Everything a report derives from the per-prompt measurements: rows, categories, notes, the limit."""
    rows = summarize(methods, results, examples, costs, report["setup"].get("fit_tolerance", FIT_TOLERANCE))
    anchor = {m: r["anchor"] for m, r in rows.items()}
    report.update(methods=rows, prompts_done=done, memory=peak_memory(),
                  notes=notes_for(rows, report["machine"]["dtype"], costs),
                  categories=by_category(methods, results, examples, anchor),
                  without_loops=without_loops(methods, results, anchor, costs))
    add_limit(report, methods, results, costs, config)


def merge_shards(shards: list[tuple[list[int], dict[str, Any], list[dict[str, Any]]]], methods: list[Method],
                 examples: list[Example], costs: CostModel | None, config: GenerationConfig,
                 setup: dict[str, Any]) -> tuple[dict[str, Any], Results]:
    """One report from the ranks' shards, each (its prompt indices, its report, its sample records), recomputed
    from the per-prompt records: nothing is averaged of averages."""
    by_index: dict[int, tuple[int, dict[str, Measurement]]] = {}
    for rank, (indices, _, records) in enumerate(shards):
        for r in records:
            by_index.setdefault(indices[r["index"]], (rank, {}))[1][r["method"]] = restore([r])[r["method"]][0]
    order = sorted(i for i, (_, found) in by_index.items() if len(found) == len(methods))
    results: Results = {m.name: [by_index[i][1][m.name] for i in order] for m in methods}
    first = shards[0][1]
    report = new_report(first["machine"], setup, first.get("context"), costs, first.get("placement", {}))
    report["ranks"] = [by_index[i][0] for i in order]
    report["machines"] = [s[1]["machine"] for s in shards]
    fill(report, methods, results, [examples[i] for i in order], costs, config, len(order))
    report["complete"] = len(order) == len(examples) and all(s[1].get("complete") for s in shards)
    return report, results


# --- presentation ------------------------------------------------------------------------------------

HEADERS = ["method", "tok/s", "x large", "modelled", "eff", "x large-hf", "chrF", "BLEU", "acc", "pass@1", "agree",
           "exact", "tau", "accept", "calls/tok", "fallback", "rollback"]


def table_row(name: str, r: dict[str, Any]) -> list[str]:
    st = r["stats"] or {}
    doubt, busy = MethodRow.model_validate(r).flags  # the marks compare prints too
    return [name + busy, fmt(r["tokens_per_s"], ".1f"), fmt(r["speedup_vs_large"], ".2f"),
            fmt(r["modelled_speedup_vs_large"], ".2f") + doubt, fmt(r.get("efficiency"), ".2f") + doubt,
            fmt(r["speedup_vs_large_hf"], ".2f"),
            fmt(r["chrf"], ".1f"), fmt(r["bleu"], ".1f"), fmt(r.get("accuracy"), ".2f"), fmt(r.get("pass_at_1"), ".3f"),
            fmt(r["agreement_with_large"], ".3f"),
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
    return "\n".join([head, body, *position_lines(report), *category_lines(report), *loop_lines(report),
                      *oracle_lines(report), *tail,
                      *(f"note: {n}" for n in report.get("notes", []))])


def position_lines(report: dict[str, Any]) -> list[str]:
    """Acceptance by draft position for every speculative method (vLLM's per-position acceptance)."""
    lines = []
    for name, r in report["methods"].items():
        by_position = (r["stats"] or {}).get("acceptance_by_position") or []
        if by_position:
            lines.append(f"acceptance by position, {name}: " + " ".join(fmt(a, ".2f") for a in by_position))
    return lines


def category_lines(report: dict[str, Any]) -> list[str]:
    """Speedup over each method's anchor and tau, per category then overall (Spec-Bench's table)."""
    categories = report.get("categories")
    return ["by category: speedup over its anchor (tau)", category_table(categories)] if categories else []


def loop_lines(report: dict[str, Any]) -> list[str]:
    """Each method on the prompts whose large output does not end in a loop, when some did (lookup's honest test)."""
    split = report.get("without_loops")
    if not split or not split["looping"] or not split["methods"]:
        return []
    rows = [[name, fmt(r["speedup_vs_large"], ".2f"), fmt(r["modelled_speedup_vs_large"], ".2f"),
             fmt(r["mean_accepted_tokens"], ".2f")] for name, r in split["methods"].items()]
    return [f"without the {split['looping']} of {split['prompts']} prompts whose `{split['reference']}` output ends "
            f"in a loop ({split['prompts'] - split['looping']} prompts):",
            table(["method", "x large", "modelled", "tau"], rows)]


def oracle_lines(report: dict[str, Any]) -> list[str]:
    """The limit under the table: the oracle, a fixed draft length, the closed form, where each method loses."""
    o = report.get("oracle")
    if not o or o.get("modelled_speedup") is None:
        return []
    cf, fixed = o["closed_form"], o["best_fixed"]
    lines = [f"oracle (knows which drafts the large model accepts; cap {o['cap']}): {o['modelled_speedup']:.2f}x "
             f"modelled; best fixed draft length {fixed['gamma']}: {fixed['modelled_speedup']:.2f}x; closed form "
             f"(acceptance {cf['alpha']:.2f}, draft cost {cf['ratio']:.2f}): gamma {cf['best_gamma']} "
             f"{cf['speedup']:.2f}x, bound {fmt(cf['bound'], '.2f')}x"]
    ladder = {k: v for k, v in (o.get("ideal_ladder") or {"confidence": o.get("ideal")}).items() if v}
    if ladder:
        lines.append("ideal (knows each draft's calibrated acceptance probability by signal, not its outcome): "
                     + ", ".join(f"{k} {v['modelled_speedup']:.2f}x, {v['efficiency']:.2f} of the oracle"
                                 for k, v in ladder.items()))
    by_sources = {k: v for k, v in (o.get("sources") or {}).items() if v is not None}
    if by_sources:
        lines.append("oracle by draft sources: " + ", ".join(f"{k} {v:.2f}x" for k, v in by_sources.items())
                     + f"; repetition of the large model's output (tokens continuing an earlier 4-gram): "
                       f"{fmt(o.get('repetition'), '.2f')}")
    for name, r in report["methods"].items():
        if r.get("efficiency") is None:
            continue
        own = (f"; {r['efficiency_own']:.2f} of the oracle of its sources ({'+'.join(r['sources'])})"
               if r.get("efficiency_own") is not None and r.get("sources") != ["small"] else "")
        share = ("; the gap: " + ", ".join(f"{k.replace('_', ' ')} {100 * v:.0f}%" for k, v in r["gap"].items())
                 if r.get("gap") else "")
        lines.append(f"  {name}: efficiency {r['efficiency']:.2f} of the oracle{own}{share}")
    return lines


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
    if report.get("oracle") and report["oracle"].get("modelled_speedup") is not None:
        figure(oracle_plot_path(path), lambda axes: draw_limit(axes, report), size=(10.0, 4.0), panels=2)


def oracle_plot_path(path: str) -> str:
    """Where the oracle's figure goes beside the bench's: `bench.png` -> `bench-oracle.png`."""
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-oracle.{suffix}" if dot else f"{path}-oracle"


def draw_limit(axes: list[Any], report: dict[str, Any]) -> None:
    """Per prompt, each lossless method's efficiency; beside it, acceptance against the small model's confidence."""
    ax, right = axes
    for name, r in report["methods"].items():
        if r.get("per_prompt_efficiency"):
            ax.plot(range(len(r["per_prompt_efficiency"])), r["per_prompt_efficiency"], "o-", ms=3, label=name)
    ax.axhline(1.0, color="0.5", ls="--", label="oracle")
    if report["oracle"].get("ideal"):
        ax.axhline(report["oracle"]["ideal"]["efficiency"], color="0.5", ls=":", label="confidence ideal")
    ax.set_xlabel("prompt")
    ax.set_ylabel("efficiency (modelled speedup / oracle's)")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, loc="lower right")
    bins = report["oracle"]["calibration"]
    right.plot([b["max_prob"] for b in bins], [b["acceptance"] for b in bins], "o-", label="measured")
    right.plot([0, 1], [0, 1], color="0.5", ls="--", label="calibrated")
    right.set_xlabel("small model's max probability")
    right.set_ylabel("P(draft accepted)")
    right.legend(fontsize=7)
