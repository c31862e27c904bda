"""`bild calibrate`: measure a cost model (bild/costs.py) for a pair on this device.

For each model it times, after a prompt of typical length, one pass feeding n tokens for every
n the engine feeds (bild/schedule.py: the small model 1..cap + 2, its catch-up over source drafts
included; the large model 1..cap + 1), each after warm-up and as the median of repeats, rewinding
the cache after each; then prefills of a few prompt
lengths (repeats bounded by `PREFILL_SECONDS` per length: a long prompt on a CPU takes seconds),
fitted by a line; then the engine's own time per pass, from a short greedy speculative run.
Passes go through the same runners (fast path, static buffers, graphs) as decoding does.

A calibration measures its own noise, and a noisy one is never cached silently. It keeps every
repeat: per length the relative interquartile range (`spread`); it records how much CPU other
processes took meanwhile (bild/lab/load.py); and it checks the curve's shape. It is noisy when
a length's spread exceeds `MAX_SPREAD`, other processes took more than `load.BUSY` of the
machine, a pass is cheaper than a shorter one beyond its noise, or a 2-token pass costs more
than `STEEP` one-token passes. A noisy calibration is measured again, up to `TRIES` times, with a
line saying why (an implausible curve whose implausible points a second try on a steady machine
measures again at the same lengths is the machine's own, e.g. a kernel that serves one row slower
than two, or three slower than four: it is kept, its prices made monotone, and `noise.reproduced`
says so — the same lengths, not the same seconds: on a CPU whose fp32 kernels vary by 15% from one
try to the next, the dip is what recurs); if it stays noisy, `bild calibrate`
refuses to write it (exit 2, one line saying what was noisy) and a bench or tune prices this run
with it but does not cache it, and says so — unless `--accept-noisy` is given, which is recorded
in the file (`noise.accepted`) and so in every report priced by it.

One cost model per pair, device, dtype and fast path: a bench or tune without `--cost-model`
uses the one cached for its setup (`$BILD_CACHE/costs/`, keyed by the models' shapes, the
hardware, dtype, fast path, draft cap and torch version; bild/lab/identity.py), calibrating it
once when there is none, so every bench of a pair on one machine prices passes alike, and an
aligned small model (same shape) is priced like its original. `--recalibrate` measures it
again; a cache file that is corrupt or of another format is measured again with one warning.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from bild.config import GenerationConfig
from bild.costs import NOISE_FLOOR, CostModel, PassCosts, dips
from bild.engine import generate
from bild.errors import BildError, describe_errors
from bild.forward import Runner
from bild.lab.identity import COST_KEYS, cost_mismatch, pair_identity
from bild.lab.load import LoadMeter
from bild.lab.options import RunOptions
from bild.pair import ModelPair
from bild.schedule import widest

CONTEXT = 128  # tokens before the timed passes: a typical prompt
PREFILL_SECONDS = 10.0  # the time one prefill length may take, repeats included (at least 2 repeats)
MAX_SPREAD = 0.5  # a length whose repeats' interquartile range exceeds this share of their median is noisy
# (and exceeds costs.NOISE_FLOOR seconds)
STEEP = 3.0  # a 2-token pass costing more than this many 1-token passes is not a plausible curve
TRIES = 3  # calibrations made before a noisy one is given up on


class Doubts(NamedTuple):
    """What makes one calibration doubtful: an unsteady machine, an implausible curve in words, and where that
    curve is implausible (`implausible`: what a second try must find again for the curve to be the machine's)."""

    unsteady: list[str]
    shape: list[str]
    marks: set[tuple[str, str, int]]


class NoisyCalibration(BildError):
    """A calibration that stayed noisy after `TRIES` tries: its last cost model and why."""

    def __init__(self, costs: CostModel, problems: list[str]) -> None:
        super().__init__(f"the calibration stayed noisy after {TRIES} tries ({problems[0]}"
                         f"{f'; {len(problems) - 1} more' if len(problems) > 1 else ''}): calibrate again on a quiet "
                         "machine, or pass --accept-noisy to keep it anyway (recorded in the file)")
        self.costs, self.problems = costs, problems


def spread(samples: list[float]) -> float:
    """The interquartile range of `samples` over their median."""
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return (q[2] - q[0]) / max(q[1], 1e-12)


def _sync(pair: ModelPair) -> None:
    if pair.device.type == "cuda":
        torch.cuda.synchronize(pair.device)


def encoder_input(runner: Runner, ids: list[int]) -> list[int] | None:
    """What an encoder-decoder's encoder reads before the timed decoder passes (a prompt of the same ids)."""
    return ids if runner.encoder_decoder else None


def time_passes(runners: dict[str, Runner], lengths: dict[str, list[int]], pair: ModelPair, repeats: int,
                context: int, progress: bool = True) -> dict[str, list[list[float]]]:
    """Seconds of each repeat of a pass feeding n tokens after `context` cached ones, per model and n.

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
    return {w: [times[w, n][2:] for n in lengths[w]] for w in runners}


def time_prefill(runner: Runner, pair: ModelPair, lengths: list[int], repeats: int) -> tuple[float, float]:
    """A line `a + b * tokens` through the median prefill times of a few prompt lengths (each length's repeats
    stop once it has taken `PREFILL_SECONDS`, after at least two)."""
    xs, ys = [], []
    for n in lengths:
        ids = [(5 * i + 1) % pair.vocab_size for i in range(n)]
        times: list[float] = []
        while len(times) < repeats + 1 and (len(times) < 3 or sum(times) < PREFILL_SECONDS):
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
    most = widest(config.draft_cap(), sources=True)  # the small model's catch-up over drafts a source proposed
    return {w: pair.runner(w, config.fast_path, most[w]) for w in ("small", "large")}


def costs_identity(pair: ModelPair, config: GenerationConfig) -> dict:
    """What a cost model's figures are valid for."""
    fast_path = runners_for(pair, config)["large"].fast_path
    return {**pair_identity(pair), "fast_path": fast_path, "placement": pair.placement()["large"]["spread"],
            "torch": torch.__version__}


def read_cost_model(options: RunOptions) -> CostModel | None:
    """The `--cost-model` file, read and checked for shape (before any model loads), or None."""
    return CostModel.load(options.cost_model) if options.cost_model else None


def cache_path(identity: dict, cap: int) -> Path:
    from bild.paths import cache_dir

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
        unknown = not any(k in given.identity for k in COST_KEYS)  # made by hand, a prior: it prices any pair
        if unknown and not options.force_cost_model:
            raise BildError(f"cost model {options.cost_model!r} does not say what it was measured on (no identity: "
                            "made by hand, or a prior): calibrate this setup with `bild calibrate`, or pass "
                            "--force-cost-model to use it anyway")
        if differ and not options.force_cost_model:
            raise BildError(f"cost model {options.cost_model!r} was measured with another {', '.join(differ)} "
                            f"({', '.join(f'{k}={given.identity[k]}' for k in differ)}): calibrate this setup "
                            "with `bild calibrate`, or pass --force-cost-model to use it anyway")
        if differ or unknown:
            print(f"warning: using cost model {options.cost_model} "
                  f"{'measured with another ' + ', '.join(differ) if differ else 'of an unknown setup'}",
                  file=sys.stderr)
        return given.model_copy(update={"source": f"file {options.cost_model}"})
    path = cache_path(identity, options.generation.draft_cap())
    cached = settle(None if options.recalibrate else cached_costs(path, identity))
    if cached is not None:
        return cached
    print(f"calibrating what each pass costs on {identity['hardware']} ({identity['fast_path']}, {identity['dtype']}); "
          f"once per pair shape and device, cached in {path.parent}", file=sys.stderr, flush=True)
    try:
        costs = calibrate(pair, options.generation, accept_noisy=options.accept_noisy)
    except NoisyCalibration as e:
        print(f"warning: {e.problems[0]}: the calibration stayed noisy, so it prices this run only and is not "
              "cached (its noise is in the report); the next run on a quiet machine calibrates again",
              file=sys.stderr, flush=True)
        return e.costs.model_copy(update={"source": "calibrated, noisy, not cached"})
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


def calibrate(pair: ModelPair, config: GenerationConfig, repeats: int = 20, progress: bool = True,
              accept_noisy: bool = False) -> CostModel:
    """Time this pair's passes on its device under `config`'s fast path and draft cap, again while the
    calibration is noisy (up to `TRIES` times); a calibration that stays noisy raises `NoisyCalibration`
    unless `accept_noisy`. An implausible curve measured twice alike on a steady machine is the machine's own
    (a kernel that serves one row slower than two): it is kept, and says so."""
    identity = costs_identity(pair, config)  # outside inference mode: a tensor-parallel weight cannot be read in it
    previous: set[tuple[str, str, int]] | None = None  # where the last try's curves were implausible, if steady
    for attempt in range(1, TRIES + 1):
        costs, (unsteady, shape, marks) = measure_costs(pair, config, identity, repeats, progress)
        if not unsteady and not shape:
            return costs
        if not unsteady and previous is not None and marks <= previous:
            found = [s.split(" beyond its noise")[0] for s in shape]  # what was measured, not the advice for noise
            print(f"bild calibrate: try {attempt} measured the same curve as try {attempt - 1} ({'; '.join(found)}): "
                  "the machine's own, kept (priced monotone)", file=sys.stderr, flush=True)
            return costs.model_copy(update={"noise": {**costs.noise, "problems": [], "reproduced": found}})
        previous = None if unsteady else marks
        print(f"bild calibrate: try {attempt} of {TRIES} was noisy ({'; '.join(unsteady + shape)})"
              + ("; measuring again" if attempt < TRIES else ""), file=sys.stderr, flush=True)
    if not accept_noisy:
        raise NoisyCalibration(costs, unsteady + shape)
    return costs.model_copy(update={"noise": {**costs.noise, "accepted": True}})


def implausible(medians: dict[str, list[float]], spreads: dict[str, list[float]]) -> set[tuple[str, str, int]]:
    """Where each model's curve cannot be the cost of more work: the lengths it dips at (`costs.dips`), and a
    2-token pass `STEEP` times a 1-token one."""
    marks = {(w, "dip", n) for w in medians for n in dips(medians[w], spreads[w])}
    return marks | {(w, "steep", 1) for w, p in medians.items() if len(p) > 1 and p[1] > STEEP * p[0]}


@torch.inference_mode()
def measure_costs(pair: ModelPair, config: GenerationConfig, identity: dict, repeats: int, progress: bool
                  ) -> tuple[CostModel, Doubts]:
    """One calibration, and what makes it doubtful (`noise_problems`; nothing: empty)."""
    from policies import make_policy

    cap = config.draft_cap()
    context = min(CONTEXT, (pair.context_length(pair.large) or 4 * CONTEXT) // 2)
    prefill_lengths = [n for n in (16, 64, 128, 256) if n + 2 <= (pair.context_length(pair.large) or 1 << 30)]
    runners = runners_for(pair, config)
    lengths = {w: list(range(1, most + 1)) for w, most in widest(cap, sources=True).items()}
    meter = LoadMeter()
    samples = time_passes(runners, lengths, pair, repeats, context, progress)
    prefill = {w: time_prefill(runners[w], pair, prefill_lengths, repeats) for w in runners}
    ids = [(11 * i + 5) % pair.vocab_size for i in range(context)]
    run = generate(pair, ids, make_policy("exact"), config.model_copy(update={"max_new_tokens": 32}))
    s = run.stats
    overhead = max(s.wall_seconds - s.small.seconds - s.large.seconds, 0.0) / max(s.small.calls + s.large.calls, 1)
    load = meter.read()
    medians = {w: [statistics.median(x) for x in samples[w]] for w in runners}
    spreads = {w: [round(spread(x), 4) for x in samples[w]] for w in runners}
    doubts = noise_problems(medians, spreads, load)
    costs = {w: PassCosts(passes=list(itertools.accumulate(medians[w], max)), prefill=prefill[w], spread=spreads[w])
             for w in runners}  # stored monotone, as it is priced: an accepted noisy dip cannot refuse its own file
    noise = {"spread": {w: max(spreads[w]) for w in runners}, "load": load,
             "problems": doubts.unsteady + doubts.shape,
             "accepted": False, "repeats": repeats, "medians": medians}  # medians: the curves as measured
    return CostModel(small=costs["small"], large=costs["large"], overhead_per_pass=overhead,
                     identity={**identity, "cap": cap}, noise=noise,
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds")), doubts


def noise_problems(medians: dict[str, list[float]], spreads: dict[str, list[float]], load: dict) -> Doubts:
    """What makes a calibration untrustworthy: an unsteady machine (busy, or repeats that spread), and an
    implausible curve (`implausible`, in words), which only a second try can tell from the machine's own."""
    marks = implausible(medians, spreads)
    unsteady, shape = [], []
    if load["busy"]:
        unsteady.append(f"other processes took {100 * load['others_cpu']:.0f}% of the {load['cores']} cores")
    for which in medians:
        worst = max(range(len(spreads[which])), key=spreads[which].__getitem__)
        if spreads[which][worst] > MAX_SPREAD and spreads[which][worst] * medians[which][worst] > NOISE_FLOOR:
            unsteady.append(f"the {which} model's passes of {worst + 1} tokens spread by "
                            f"{100 * spreads[which][worst]:.0f}% of their median")
        passes = medians[which]
        if (which, "steep", 1) in marks:
            shape.append(f"a {which} pass of 2 tokens costs {passes[1] / passes[0]:.1f}x one of 1 token")
        try:  # the cost model's own words for its first dip
            PassCosts(passes=passes, prefill=(0.0, 0.0), spread=spreads[which])
        except ValidationError as e:
            shape.append(f"the {which} model's {describe_errors(e, where=lambda loc: '', first=True)}")
    return Doubts(unsteady, shape, marks)
