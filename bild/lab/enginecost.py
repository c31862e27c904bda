"""The engine's own cost, apart from the models': a generation replayed over its recorded passes.

A first generation runs the real models through `Recording` runners that keep every pass's
output; a second generation of the same prompt, policy and config runs over `Replaying` runners
that hand those outputs back without running anything (and refuse ids other than the recorded
ones). What the replay spends is the engine's, the policy's and the sampler's own work: on a
GPU, host time that no captured graph hides and that the models' passes wait behind. It is timed
per draft (the interval that ends with the policy's decision on a small-model draft) and per
verification (the interval that ends with the rollback decision, any lookup drafts before it
included), and the torch operations it dispatches itself are counted: each one is a kernel
launch on a GPU, outside the captured passes.

This measures the engine on the CPU as a stand-in for what issue 30's GPU check cannot
separate; gpu_check's smoke step reports it per machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from torch.utils._python_dispatch import TorchDispatchMode

from bild.config import GenerationConfig
from bild.engine import Prompt, generate
from bild.errors import BildError
from bild.forward import Pass, Runner
from bild.observer import Observer
from bild.pair import ModelPair
from bild.policy import Policy


class EngineCost(BaseModel):
    """The engine's own share of one generation, its model passes replayed."""

    drafts: int  # small-model drafts the policy decided on
    verifications: int
    ms_per_draft: float  # median host milliseconds of a draft's interval, its small pass replayed
    ms_per_verification: float  # the same for a verification
    ms_per_token: float  # the replay's wall time over the tokens it generated
    ops_per_pass: float  # torch operations the engine and policy dispatch per model pass, replayed ones excluded


class Recording:
    """A runner's stand-in that runs it and keeps each pass: (ids fed, rows kept, output)."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.fast_path, self.passes = runner, runner.fast_path, []

    @property
    def graphs(self) -> tuple[int, int]:
        return self.runner.graphs

    def widen(self, most: int) -> None:
        self.runner.widen(most)

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        self.runner.start(capacity, encoder_ids)

    def feed(self, ids: list[int], keep: int) -> Pass:
        out = self.runner.feed(ids, keep)
        self.passes.append((list(ids), keep, out))
        return out

    def rewind(self, drop: int) -> None:
        self.runner.rewind(drop)


class Replaying:
    """A runner's stand-in that hands back recorded passes in order and runs nothing."""

    fast_path, graphs = "replay", (0, 0)

    def __init__(self, passes: list[tuple[list[int], int, Pass]], label: str) -> None:
        self.passes, self.label, self.next = passes, label, 0

    def widen(self, most: int) -> None:
        pass

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        self.next = 0

    def feed(self, ids: list[int], keep: int) -> Pass:
        if self.next >= len(self.passes) or self.passes[self.next][:2] != (ids, keep):
            raise BildError(f"the replay of the {self.label} model's passes parted from the recording at pass "
                            f"{self.next}: the policy or sampler is not deterministic for a given seed")
        self.next += 1
        return self.passes[self.next - 1][2]

    def rewind(self, drop: int) -> None:
        pass


@contextmanager
def runners(pair: ModelPair, make: Any) -> Iterator[None]:
    """Every runner the pair hands out wrapped by `make(runner, which)` while the block runs."""
    real = pair.runner
    pair.runner = lambda which, fast_path, most=1: make(real(which, fast_path, most), which)
    try:
        yield
    finally:
        del pair.runner


class Intervals(Observer):
    """Seconds between events: each ends a draft's interval or a verification's."""

    def __init__(self) -> None:
        self.drafts: list[float] = []
        self.verifications: list[float] = []
        self.last = time.perf_counter()

    def lap(self, into: list[float]) -> None:
        now = time.perf_counter()
        into.append(now - self.last)
        self.last = now

    def before_generation(self, prompt_ids: list[int]) -> None:
        self.last = time.perf_counter()

    def after_draft(self, step: Any, fell_back: bool) -> None:
        self.lap(self.drafts)

    def after_verification(self, verification: Any, outcome: Any) -> None:
        self.lap(self.verifications)


class Dispatched(TorchDispatchMode):
    """The torch operations dispatched while it is active, by schema name, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def engine_cost(pair: ModelPair, prompt: Prompt, policy: Policy | str, config: GenerationConfig,
                repeats: int = 5) -> EngineCost:
    """The engine's own cost in generating `prompt` (medians over `repeats` replays after one real generation)."""
    recorded: dict[str, Recording] = {}

    def record(runner: Runner, which: str) -> Recording:
        recorded[which] = recorded.get(which) or Recording(runner)
        return recorded[which]

    with runners(pair, record):
        real = generate(pair, prompt, policy, config)
    with runners(pair, lambda runner, which: Replaying(recorded[which].passes, which)):
        walls, draft_ms, verify_ms = [], [], []
        for _ in range(repeats):
            intervals = Intervals()
            result = generate(pair, prompt, policy, config, observers=[intervals])
            walls.append(result.stats.wall_seconds)
            draft_ms += [1000 * s for s in intervals.drafts]
            verify_ms += [1000 * s for s in intervals.verifications]
        with Dispatched() as dispatched:
            generate(pair, prompt, policy, config)
    if result.token_ids != real.token_ids:
        raise BildError("the replayed generation decoded other tokens than the real one")
    passes = sum(len(r.passes) for r in recorded.values())
    return EngineCost(drafts=len(draft_ms) // repeats, verifications=len(verify_ms) // repeats,
                      ms_per_draft=statistics.median(draft_ms) if draft_ms else 0.0,
                      ms_per_verification=statistics.median(verify_ms),
                      ms_per_token=1000 * statistics.median(walls) / max(len(real.token_ids), 1),
                      ops_per_pass=len(dispatched.names) / passes)
