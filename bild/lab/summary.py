"""What a bench's measurements add up to: one row per method, and the same on groups of prompts.

Anchors: each method is compared (speed, exact match, agreement) with the `large` baseline that
ran on the same fast path as its own large model (`exact@fast_path=graph` against
`large@fast_path=graph`), read from the statistics of what actually ran; transformers' own
methods, with the first `large` benched. Token identity is a float32 claim: in reduced precision a
multi-token pass may round differently, so a row gives agreement and where outputs first part.
A modelled speedup prices each run's passes by the cost model, for the methods that ran on its
fast path, and `model_fit` says how far it is from the measured one.
"""

from __future__ import annotations

import resource
from typing import Any

import torch

from bild.costs import CostModel
from bild.lab.hfcount import FAST_PATH as TRANSFORMERS
from bild.lab.load import BUSY
from bild.lab.measure import Measurement, Results
from bild.lab.methods import Method, total_stats
from bild.lab.metrics import accuracy, exact_match, first_difference, reference_metrics, token_agreement
from bild.lab.oracle import ends_in_loop
from bild.lab.tasks import TOTAL, Example
from bild.stats import GenerationStats, ModelStats


def tokens_per_second(measurements: list[Measurement]) -> float:
    return sum(len(m.tokens) for m in measurements) / max(sum(m.seconds for m in measurements), 1e-9)


def speedup(found: list[Measurement], base: list[Measurement], costs: CostModel | None = None) -> float:
    """Tokens per unit of time of `found` over `base` (the same prompts): modelled by `costs` when given,
    else measured on the clock."""
    if costs is not None:
        found, base = ([m.model_copy(update={"seconds": costs.seconds(m.stats)}) for m in ms] for ms in (found, base))
    return tokens_per_second(found) / tokens_per_second(base)


def policy_stats(stats: list[GenerationStats]) -> dict[str, Any]:
    total = total_stats(stats)
    return total.model_dump(exclude={"tokens_per_second"}) | {
        "fallback_rate": total.fallbacks / total.small.calls if total.small.calls else None,
        "rollback_rate": total.rollbacks / total.large.calls if total.large.calls else None,
        "overhead_ms_per_token": 1000 * (total.wall_seconds - total.small.seconds - total.large.seconds)
        / total.new_tokens if total.new_tokens and total.wall_seconds else None,  # counted from outside: untimed
    }


def quality(measurements: list[Measurement], examples: list[Example], anchor: list[Measurement] | None
            ) -> dict[str, Any]:
    """Reference metrics, and agreement with the anchor (the large model's output) on the prompts done."""
    refs = [e.reference for e in examples[: len(measurements)]]
    q: dict[str, Any] = reference_metrics([m.text for m in measurements], refs)
    answers = [e.answer for e in examples[: len(measurements)]]
    q["accuracy"] = accuracy([m.text for m in measurements], answers) if answers and None not in answers else None
    tested = [m.tests for m in measurements if m.tests is not None]
    q["pass_at_1"] = sum(t == "passed" for t in tested) / len(tested) if tested else None
    tokens, base = [m.tokens for m in measurements], [m.tokens for m in anchor or []][: len(measurements)]
    q["agreement"] = token_agreement(tokens, base) if anchor else None
    q["exact_match"] = exact_match(tokens, base) if anchor else None
    q["first_difference"] = first_difference(tokens, base) if anchor else None
    return q


def ran_on(measurements: list[Measurement]) -> ModelStats | None:
    """The statistics of the model whose path anchors a method: the large model's, or the small one's when
    it ran alone; None for transformers' own methods (counted or not)."""
    stats = measurements[0].stats if measurements else None
    if stats is None or stats.large.fast_path == TRANSFORMERS:
        return None
    return stats.large if stats.large.fast_path else stats.small


def anchors(methods: list[Method], results: Results) -> dict[str, str | None]:
    """Each method's anchor: the first `large` benched on the fast path its large model ran on (engine
    methods), the first `large` benched (transformers' methods), None when there is none."""
    larges: dict[str | None, str] = {}
    for m in methods:
        model = ran_on(results[m.name])
        if m.baseline == "large" and model is not None:
            larges.setdefault(model.fast_path, m.name)
    first = next(iter(larges.values()), None)
    found = {}
    for m in methods:
        model = ran_on(results[m.name])
        found[m.name] = first if model is None else larges.get(model.fast_path)
    return found


def priced_by(costs: CostModel | None, measurements: list[Measurement]) -> bool:
    """Whether `costs` prices these measurements: they ran on the fast path it was calibrated on (a cost model
    that names none prices every path). transformers' counted passes are priced as `off`'s, which runs the
    same forward passes on the same dynamic cache: what its schedule would cost in this engine."""
    stats = measurements[0].stats if measurements else None
    if stats is not None and stats.large.fast_path == TRANSFORMERS:
        path = "off"
    else:
        path = model.fast_path if (model := ran_on(measurements)) else None
    return costs is not None and path is not None and costs.identity.get("fast_path") in (None, path)


def fast_path_summary(measurements: list[Measurement]) -> dict[str, str] | None:
    """What each model of a method ran on, e.g. {"small": "graph (2/2 captured)", "large": "graph (11/11 captured)"}."""
    stats = total_stats([m.stats for m in measurements if m.stats is not None]) if measurements else None
    if stats is None or not measurements[0].stats:
        return None
    found = {}
    for which, model in (("small", stats.small), ("large", stats.large)):
        if model.fast_path:
            graphs = f" ({model.graphs_captured}/{model.graph_buckets} captured)" if model.graph_buckets else ""
            found[which] = model.fast_path + graphs
    return found


def machine_load(measurements: list[Measurement]) -> dict[str, Any] | None:
    """The share of the CPU other processes took while a method ran (weighted by time), and whether that is busy."""
    timed = [(m.others_cpu, m.seconds) for m in measurements if m.others_cpu is not None]
    if not timed:
        return None
    share = sum(o * s for o, s in timed) / max(sum(s for _, s in timed), 1e-12)
    return {"others_cpu": round(share, 3), "busy": share > BUSY, "worst": max(o for o, _ in timed)}


def model_fit(modelled: float | None, measured: float | None, tolerance: float) -> dict[str, Any] | None:
    """How far a modelled speedup is from the measured one: their ratio, and whether it is beyond `tolerance`."""
    if modelled is None or measured is None or measured <= 0:
        return None
    ratio = modelled / measured
    return {"ratio": round(ratio, 4), "flagged": abs(ratio - 1) > tolerance, "tolerance": tolerance}


def summarize(methods: list[Method], results: Results, examples: list[Example],
              costs: CostModel | None = None, tolerance: float = 0.15) -> dict[str, dict[str, Any]]:
    """One row per method: speed, speedups over its anchor (measured, and modelled by `costs` for the methods
    that ran on its fast path) and over `large-hf`, how far the two agree (`model_fit`, flagged beyond
    `tolerance`), quality, the machine's load while it ran, the fast paths that ran, engine statistics."""
    tps = {m.name: tokens_per_second(results[m.name]) for m in methods}
    anchor = anchors(methods, results)
    rows = {}
    for m in methods:
        done, base = results[m.name], anchor[m.name]
        q = quality(done, examples, results[base] if base else None)
        rows[m.name] = {
            "tokens_per_s": tps[m.name], "new_tokens": sum(len(x.tokens) for x in done),
            "seconds": sum(x.seconds for x in done), "anchor": base,
            "speedup_vs_large": tps[m.name] / tps[base] if base else None,
            "speedup_vs_large_hf": tps[m.name] / tps["large-hf"] if "large-hf" in tps else None,
            "modelled_speedup_vs_large": speedup(done, results[base][: len(done)], costs)
            if base and priced_by(costs, done) and priced_by(costs, results[base]) else None,
            "chrf": q["chrf"], "bleu": q["bleu"], "rouge_l": q["rouge_l"], "accuracy": q["accuracy"],
            "pass_at_1": q["pass_at_1"],
            "agreement_with_large": q["agreement"], "exact_match_with_large": q["exact_match"],
            "first_difference": q["first_difference"],
            "params": m.policy.params() if m.policy else None, "origin": m.origin,
            "generation": m.generation or None,
            "fast_paths": fast_path_summary(done),
            "peak_gpu_mib": max((x.peak_gpu_mib for x in done if x.peak_gpu_mib is not None), default=None),
            "load": machine_load(done),
            "stats": policy_stats([x.stats for x in done]) if done and done[0].stats is not None else None,
        }
    for row in rows.values():
        row["model_fit"] = model_fit(row["modelled_speedup_vs_large"], row["speedup_vs_large"], tolerance)
    return rows


def group_rows(methods: list[Method], results: Results, index: list[int], anchor: dict[str, str | None],
               costs: CostModel | None = None) -> dict[str, dict[str, Any]]:
    """Each method's speed, speedup over its anchor (measured, and modelled where `costs` prices it), tau,
    acceptance and large calls per token on the prompts of `index`."""
    rows = {}
    for m in methods:
        mine = [results[m.name][i] for i in index]
        base = [results[anchor[m.name]][i] for i in index] if anchor[m.name] else None
        stats = total_stats([x.stats for x in mine]) if mine[0].stats is not None else None
        priced = base is not None and priced_by(costs, mine) and priced_by(costs, base)
        rows[m.name] = {"prompts": len(index), "tokens_per_s": tokens_per_second(mine),
                        "speedup_vs_large": speedup(mine, base) if base else None,
                        "modelled_speedup_vs_large": speedup(mine, base, costs) if priced else None,
                        "mean_accepted_tokens": stats.mean_accepted_tokens if stats else None,
                        "acceptance_rate": stats.acceptance_rate if stats else None,
                        "large_calls_per_token": stats.large_calls_per_token if stats else None}
    return rows


def by_category(methods: list[Method], results: Results, examples: list[Example], anchor: dict[str, str | None]
                ) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Per category of the examples (Spec-Bench's), then `overall`: `group_rows` on that category's prompts.
    None without categories."""
    done = min(len(r) for r in results.values())
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples[:done]):
        if e.category is not None:
            groups.setdefault(e.category, []).append(i)
    if not groups:
        return None
    groups[TOTAL] = list(range(done))
    return {category: group_rows(methods, results, index, anchor) for category, index in groups.items()}


def without_loops(methods: list[Method], results: Results, anchor: dict[str, str | None],
                  costs: CostModel | None) -> dict[str, Any] | None:
    """`group_rows` on the prompts whose large model's output does not end in a loop (oracle.ends_in_loop):
    a gain seen only on looping outputs is context lookup copying the loop. None without a `large` method."""
    reference = next((name for name in ("large", *anchor.values()) if name in results), None)
    if reference is None:
        return None
    done = min(len(r) for r in results.values())
    index = [i for i in range(done) if not ends_in_loop(results[reference][i].tokens)]
    rows = group_rows(methods, results, index, anchor, costs) if index else {}
    return {"reference": reference, "looping": done - len(index), "prompts": done, "methods": rows}


def peak_memory() -> dict[str, float]:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    mem = {"peak_rss_mib": kib / 1024}
    if torch.cuda.is_available():
        mem["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return mem
