"""Timing methods on a prompt set: the one measuring layer `bench` and `tune` share.

Honest timing: every method (bild/lab/methods.py) is warmed up once on the longest prompt
(allocations, lazy imports, static caches and graphs sized and captured for the whole set); for
each prompt the methods run in a rotated order (no method always runs first or last), `repeats`
times, keeping the median wall time (CUDA synchronised) and the share of the CPU other processes
took meanwhile. A policy's state is created once per method (`Policy.new_state`), so a policy
that learns does so across prompts, as in use. Each output is decoded once. What the
measurements add up to (speedups, anchors, quality) is bild/lab/summary.py's.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, Field

from bild.lab.chat import Conversation
from bild.lab.load import LoadMeter
from bild.lab.methods import Method, Output, Run, converse, method_runner
from bild.lab.workload import Workload
from bild.stats import GenerationStats


class Measurement(BaseModel):
    """One method on one prompt: the median time of its repeats and its (deterministic) output."""

    id: str
    method: str
    seconds: float
    tokens: list[int]
    text: str
    stats: GenerationStats | None = None
    rounds: list[list[list[int]]] | None = None  # a policy's rounds per turn, [drafted, kept, discarded]
    turns: list[int] = []  # new tokens per turn (one turn unless the example is a multi-turn conversation)
    answers: list[str] = []  # each turn's answer (what the next turn's prompt holds: Conversation.turn_prompts)
    peak_gpu_mib: float | None = None  # GPU memory at its peak during these runs (CUDA only)
    teacher: list[dict[str, Any]] | None = None  # the oracle's anchor: the small model teacher-forced, per turn
    tests: str | None = None  # what the example's tests said of the output (--execute-code): passed, failed, ...
    others_cpu: float | None = None  # the share of the machine's CPU other processes took meanwhile (load.py)
    prompts: list[list[int]] | None = Field(None, exclude=True)  # each turn's prompt ids, while the bench runs


def timed(run: Run, conversation: Conversation) -> tuple[float, Output]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = converse(run, conversation)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure_prompt(run: Run, example_id: str, method: str, conversation: Conversation, repeats: int) -> Measurement:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, out = [], None
    meter = LoadMeter()
    for _ in range(repeats):
        seconds, out = timed(run, conversation)
        times.append(seconds)
    return Measurement(id=example_id, method=method, seconds=statistics.median(times), tokens=out.tokens,
                       text=out.text, stats=out.stats, rounds=out.rounds, turns=out.turns, prompts=out.prompts,
                       answers=out.answers,
                       peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                       others_cpu=meter.read()["others_cpu"])


Results = dict[str, list[Measurement]]  # method name -> one measurement per prompt, in prompt order


def measure(work: Workload, methods: list[Method], done: Results | None = None,
            on_prompt: Callable[[int, Results], None] | None = None) -> Results:
    """Every method on every example of `work` after those in `done`; `on_prompt(i, results so far)` after each
    prompt."""
    from tqdm.auto import tqdm

    results: Results = {m.name: list((done or {}).get(m.name, [])) for m in methods}
    start = min(len(r) for r in results.values())
    examples, talks = work.examples, work.talks
    firsts = [c.first for c in talks]
    runs = {m.name: method_runner(work.pair, m, work.config, work.costs) for m in methods}
    if start < len(examples):
        longest = max(range(start, len(examples)), key=lambda i: len(firsts[i]))
        for run in runs.values():  # warm-up: allocations, kernels, lazy imports, caches sized for the set
            run(firsts[longest])
    bar = tqdm(total=(len(examples) - start) * len(methods), desc="measuring", unit="run", disable=not work.progress,
               file=sys.stderr)
    try:
        for i in range(start, len(examples)):
            for m in methods[i % len(methods):] + methods[: i % len(methods)]:
                results[m.name].append(measure_prompt(runs[m.name], examples[i].id, m.name, talks[i],
                                                      work.repeats))
                bar.update()
            if on_prompt is not None:
                on_prompt(i, results)
    finally:
        bar.close()
    return results


