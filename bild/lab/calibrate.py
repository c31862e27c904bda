"""`bild calibrate`: measure a cost model (bild/costs.py) for a pair on this device.

For each model it times, after a prompt of typical length, one pass feeding n tokens for every
n the engine feeds (the small model 1..2, the large model 1..cap + 1), each after warm-up and
as the median of repeats, rewinding the cache after each; then prefills of a few prompt
lengths, fitted by a line; then the engine's own time per pass, from a short greedy speculative
run. Passes go through the same runners (fast path, static buffers, graphs) as decoding does.

One cost model per pair, device, dtype and fast path: a bench or tune without `--cost-model`
uses the one cached for its setup (`$BILD_CACHE/costs/`, keyed by the models' shapes, the
hardware, dtype, fast path, draft cap and torch version; bild/lab/identity.py), calibrating it
once when there is none, so every bench of a pair on one machine prices passes alike, and an
aligned small model (same shape) is priced like its original. `--recalibrate` measures it
again; a cache file that is corrupt or of another format is measured again with one warning.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bild.config import GenerationConfig
from bild.costs import CostModel, PassCosts
from bild.engine import generate
from bild.errors import BildError
from bild.forward import Runner
from bild.lab.identity import COST_KEYS, cost_mismatch, pair_identity
from bild.lab.options import RunOptions
from bild.pair import ModelPair

CONTEXT = 128  # tokens before the timed passes: a typical prompt


def _sync(pair: ModelPair) -> None:
    if pair.device.type == "cuda":
        torch.cuda.synchronize(pair.device)


def encoder_input(runner: Runner, ids: list[int]) -> list[int] | None:
    """What an encoder-decoder's encoder reads before the timed decoder passes (a prompt of the same ids)."""
    return ids if runner.encoder_decoder else None


def time_passes(runners: dict[str, Runner], lengths: dict[str, list[int]], pair: ModelPair, repeats: int,
                context: int, progress: bool = True) -> dict[str, list[float]]:
    """Median seconds of a pass feeding n tokens after `context` cached ones, per model and n.

    Lengths and models are interleaved within each round, so a machine whose speed drifts slows
    every length alike instead of skewing some.
    """
    longest = max(max(n) for n in lengths.values())
    ids = [(7 * i + 3) % pair.vocab_size for i in range(context + longest)]
    for runner in runners.values():
        runner.start(context + longest + 1, encoder_input(runner, ids[:context]))
        runner.feed(ids[:context], 1)
    times: dict[tuple[str, int], list[float]] = {(w, n): [] for w in runners for n in lengths[w]}
    for _ in tqdm(range(repeats + 2), desc="calibrating passes", unit="round", disable=not progress, file=sys.stderr,
                  leave=False):  # two warm-up rounds (graph capture, allocations)
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
            runner.start(n + 2, encoder_input(runner, ids))
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
    return {**pair_identity(pair), "fast_path": fast_path, "placement": pair.placement()["large"]["spread"],
            "torch": torch.__version__}


def read_cost_model(options: RunOptions) -> CostModel | None:
    """The `--cost-model` file, read and checked for shape (before any model loads), or None."""
    return CostModel.load(options.cost_model) if options.cost_model else None


def cache_path(identity: dict, cap: int) -> Path:
    from bild.lab.paths import cache_dir

    key = json.dumps([identity.get(k) for k in COST_KEYS] + [cap, identity.get("torch")])
    return cache_dir() / "costs" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cost_model_for(options: RunOptions, pair: ModelPair, given: CostModel | None = None,
                   settle: Callable[[CostModel | None], CostModel | None] = lambda found: found) -> CostModel:
    """The cost model a bench or study prices passes with: `given` (the `--cost-model` file, checked against
    this setup), else the one cached for this setup, calibrated here once if there is none (or if asked).
    `settle` turns this process's cache lookup into the one every process acts on (ranks of a tensor-parallel
    model must all calibrate, or none: each pass is collective)."""
    identity = costs_identity(pair, options.generation)
    if given is not None:
        differ = cost_mismatch(given.identity, identity)
        if differ and not options.force_cost_model:
            raise BildError(f"cost model {options.cost_model!r} was measured with another {', '.join(differ)} "
                            f"({', '.join(f'{k}={given.identity[k]}' for k in differ)}): calibrate this setup "
                            "with `bild calibrate`, or pass --force-cost-model to use it anyway")
        if differ:
            print(f"warning: using cost model {options.cost_model} measured with another {', '.join(differ)}",
                  file=sys.stderr)
        return given.model_copy(update={"source": f"file {options.cost_model}"})
    path = cache_path(identity, options.generation.draft_cap())
    cached = settle(None if options.recalibrate else cached_costs(path, identity))
    if cached is not None:
        return cached
    print(f"calibrating what each pass costs on {identity['hardware']} ({identity['fast_path']}, {identity['dtype']}); "
          f"once per pair shape and device, cached in {path.parent}", file=sys.stderr, flush=True)
    costs = calibrate(pair, options.generation)
    try:
        costs.save(path)
    except BildError as e:
        print(f"warning: the cost model could not be cached ({e})", file=sys.stderr)
    return costs.model_copy(update={"source": f"calibrated, cached in {path}"})


def cached_costs(path: Path, identity: dict) -> CostModel | None:
    """The cost model cached at `path` for this setup; None (with one warning if it is unreadable) otherwise."""
    if not path.exists():
        return None
    try:
        cached = CostModel.load(path)
    except BildError as e:
        print(f"warning: the cached cost model is unreadable ({e}); calibrating again", file=sys.stderr)
        return None
    return None if cost_mismatch(cached.identity, identity) else cached.model_copy(update={"source": f"cache {path}"})


@torch.inference_mode()
def calibrate(pair: ModelPair, config: GenerationConfig, repeats: int = 20, progress: bool = True) -> CostModel:
    """Time this pair's passes on its device under `config`'s fast path and draft cap."""
    from policies import make_policy

    identity, cap = costs_identity(pair, config), config.draft_cap()
    context = min(CONTEXT, (pair.context_length(pair.large) or 4 * CONTEXT) // 2)
    prefill_lengths = [n for n in (16, 64, 128, 256) if n + 2 <= (pair.context_length(pair.large) or 1 << 30)]
    runners = runners_for(pair, config)
    lengths = {"small": [1, 2], "large": list(range(1, cap + 2))}
    passes = time_passes(runners, lengths, pair, repeats, context, progress)
    costs = {w: PassCosts(passes=passes[w], prefill=time_prefill(runners[w], pair, prefill_lengths, repeats))
             for w in runners}
    ids = [(11 * i + 5) % pair.vocab_size for i in range(context)]
    run = generate(pair, ids, make_policy("exact"), config.model_copy(update={"max_new_tokens": 32}))
    s = run.stats
    overhead = max(s.wall_seconds - s.small.seconds - s.large.seconds, 0.0) / max(s.small.calls + s.large.calls, 1)
    return CostModel(small=costs["small"], large=costs["large"], overhead_per_pass=overhead,
                     identity={**identity, "cap": cap},
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
