"""`bild calibrate`: measure a cost model (bild/costs.py) for a pair on this device.

For each model it times, after a prompt of typical length, one pass feeding n tokens for every
n the engine feeds (the small model 1..2, the large model 1..cap + 1), each after warm-up and
as the median of repeats, rewinding the cache after each; then prefills of a few prompt
lengths, fitted by a line; then the engine's own time per pass, from a short greedy speculative
run. Passes go through the same runners (fast path, static buffers, graphs) as decoding does.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from bild.config import GenerationConfig
from bild.costs import CostModel, PassCosts
from bild.engine import generate
from bild.errors import BildError
from bild.forward import Runner
from bild.lab.identity import cost_mismatch, pair_identity
from bild.lab.options import RunOptions
from bild.pair import ModelPair

CONTEXT = 128  # tokens before the timed passes: a typical prompt


def _sync(pair: ModelPair) -> None:
    if pair.device.type == "cuda":
        torch.cuda.synchronize(pair.device)


def time_passes(runners: dict[str, Runner], lengths: dict[str, list[int]], pair: ModelPair, repeats: int,
                context: int) -> dict[str, list[float]]:
    """Median seconds of a pass feeding n tokens after `context` cached ones, per model and n.

    Lengths and models are interleaved within each round, so a machine whose speed drifts slows
    every length alike instead of skewing some.
    """
    longest = max(max(n) for n in lengths.values())
    ids = [(7 * i + 3) % pair.vocab_size for i in range(context + longest)]
    for runner in runners.values():
        runner.start(context + longest + 1)
        runner.feed(ids[:context], 1)
    times: dict[tuple[str, int], list[float]] = {(w, n): [] for w in runners for n in lengths[w]}
    for _ in range(repeats + 2):  # two warm-up rounds (graph capture, allocations)
        for which, runner in runners.items():
            for n in lengths[which]:
                _sync(pair)
                start = time.perf_counter()
                runner.feed(ids[context: context + n], 1)
                times[which, n].append(time.perf_counter() - start)
                runner.rewind(n)
    return {w: [statistics.median(times[w, n][2:]) for n in lengths[w]] for w in runners}


def time_prefill(runner: Runner, pair: ModelPair, lengths: list[int], repeats: int) -> tuple[float, float]:
    """A line `a + b * tokens` through the median prefill times of a few prompt lengths."""
    xs, ys = [], []
    for n in lengths:
        ids = [(5 * i + 1) % pair.vocab_size for i in range(n)]
        times = []
        for _ in range(repeats + 1):
            runner.start(n + 2)
            _sync(pair)
            start = time.perf_counter()
            runner.feed(ids, 1)
            times.append(time.perf_counter() - start)
        xs.append(n)
        ys.append(statistics.median(times[1:]))
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / max(
        sum((x - mean_x) ** 2 for x in xs), 1e-12)
    return max(mean_y - slope * mean_x, 0.0), max(slope, 0.0)


def runners_for(pair: ModelPair, config: GenerationConfig) -> dict[str, Runner]:
    """The runners decoding uses under `config` (the fast path resolved by the pair, as for decoding)."""
    return {"small": pair.runner("small", config.fast_path, 2),
            "large": pair.runner("large", config.fast_path, config.draft_cap() + 1)}


def costs_identity(pair: ModelPair, config: GenerationConfig) -> dict:
    """What a cost model's figures are valid for."""
    fast_path = runners_for(pair, config)["large"].fast_path
    return {**pair_identity(pair), "fast_path": fast_path, "torch": torch.__version__}


def cost_model_for(options: RunOptions, pair: ModelPair) -> CostModel:
    """The cost model a bench or study uses: the file given (checked against this setup), else this pair
    calibrated here and now."""
    if options.cost_model is None:
        return calibrate(pair, options.generation)
    costs = CostModel.load(options.cost_model)
    differ = cost_mismatch(costs.identity, costs_identity(pair, options.generation))
    if differ and not options.force_cost_model:
        raise BildError(f"cost model {options.cost_model!r} was measured with another {', '.join(differ)} "
                        f"({', '.join(f'{k}={costs.identity[k]}' for k in differ)}): calibrate this setup with "
                        "`bild calibrate`, or pass --force-cost-model to use it anyway")
    if differ:
        print(f"warning: using cost model {options.cost_model} measured with another {', '.join(differ)}",
              file=sys.stderr)
    return costs


@torch.inference_mode()
def calibrate(pair: ModelPair, config: GenerationConfig, repeats: int = 20) -> CostModel:
    """Time this pair's passes on its device under `config`'s fast path and draft cap."""
    from policies import make_policy

    identity, cap = costs_identity(pair, config), config.draft_cap()
    context = min(CONTEXT, (pair.context_length(pair.large) or 4 * CONTEXT) // 2)
    prefill_lengths = [n for n in (16, 64, 128, 256) if n + 2 <= (pair.context_length(pair.large) or 1 << 30)]
    runners = runners_for(pair, config)
    lengths = {"small": [1, 2], "large": list(range(1, cap + 2))}
    passes = time_passes(runners, lengths, pair, repeats, context)
    costs = {w: PassCosts(passes=passes[w], prefill=time_prefill(runners[w], pair, prefill_lengths, repeats))
             for w in runners}
    ids = [(11 * i + 5) % pair.vocab_size for i in range(context)]
    run = generate(pair, ids, make_policy("exact"), config.model_copy(update={"max_new_tokens": 32}))
    s = run.stats
    overhead = max(s.wall_seconds - s.small.seconds - s.large.seconds, 0.0) / max(s.small.calls + s.large.calls, 1)
    return CostModel(small=costs["small"], large=costs["large"], overhead_per_pass=overhead,
                     identity={**identity, "cap": cap},
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
