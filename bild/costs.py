"""A cost model: what a pass of each model costs on one device, by how many tokens it feeds.

BiLD's speed is fully determined by how many passes of each model ran and how many tokens each
fed (`GenerationStats`' histograms) times what such a pass costs where it runs. `CostModel`
holds those costs (seconds per pass feeding n = 1, 2, ... tokens; prefill as a line in the
prompt length; the engine's own time per pass), measured by `bild calibrate` with warm-up and
medians, with the device, dtype, versions and the pair it was measured on. `seconds(stats)` is
then the modelled time of a generation: deterministic for greedy decoding, free of the noise
of a shared machine, and portable (a study calibrated on a GPU can run its trials on CPUs).

Prices are monotone: a pass of n tokens is priced at the dearest of the passes of 1..n tokens,
so a noisy dip in a calibration can never make a longer pass look cheaper than a shorter one
(to a policy, the oracle or a report alike). A calibration records its own noise: `spread`,
the relative interquartile range of each length's repeats, and `noise`: how busy the machine
was and what, if anything, was out of bounds (bild/lab/calibrate.py decides). A file is checked
as it loads: every cost positive and finite, and no pass cheaper than a shorter one beyond its
recorded noise; a file of the first format has no spreads and loads with one warning.

Limits: a pass's cost also grows slowly with the context it attends over; the model prices
passes at the calibration's context (a typical prompt), so very long generations are priced
a little low. docs/bench.md reports how far modelled and measured speedups differ.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, model_validator

from bild.errors import BildError, describe_errors
from bild.files import write_atomic

FORMAT = "bild-cost-model/2"  # 1: no spreads, no noise record
DIP = 0.10  # a pass may be this much cheaper than a shorter one (beyond its spread) before a file is refused
NOISE_FLOOR = 0.002  # seconds: below this, sub-millisecond passes jitter by the timer's and Python's own noise
log = logging.getLogger("bild")


def dips(passes: list[float], spread: list[float] | None = None) -> list[int]:
    """The indices n whose pass is cheaper than the one before beyond noise (`DIP`, both lengths' spread, and
    `NOISE_FLOOR`): what a longer pass cannot do, unless the machine's kernels do it every time."""
    return [n for n in range(1, len(passes))
            if passes[n] < passes[n - 1] * (1 - DIP - (max(spread[n - 1], spread[n]) if spread else 0.0))
            - NOISE_FLOOR]


class PassCosts(BaseModel):
    """One model's costs on one device."""

    passes: list[float]  # seconds of a pass feeding n tokens, n = 1 .. len(passes)
    prefill: tuple[float, float]  # seconds of the first pass: a + b * prompt tokens
    spread: list[float] | None = None  # per length, the interquartile range of its repeats over their median

    @model_validator(mode="after")
    def _plausible(self) -> PassCosts:
        if not self.passes:
            raise ValueError("passes is empty: a cost model prices at least a one-token pass")
        for n, seconds in enumerate(self.passes, start=1):
            if not (math.isfinite(seconds) and 0 < seconds < 1e6):
                raise ValueError(f"passes[{n - 1}] (a pass of {n} tokens) is {seconds!r}: each cost must be a "
                                 "positive number of seconds")
        if not all(math.isfinite(v) and 0 <= v < 1e6 for v in self.prefill):
            raise ValueError(f"prefill {list(self.prefill)} must be two non-negative numbers of seconds")
        if self.spread is not None and len(self.spread) != len(self.passes):
            raise ValueError(f"spread has {len(self.spread)} values for {len(self.passes)} pass lengths")
        for n in dips(self.passes, self.spread)[:1]:
            raise ValueError(f"passes[{n}] (a pass of {n + 1} tokens, {self.passes[n]:.4g} s) is cheaper than "
                             f"passes[{n - 1}] ({self.passes[n - 1]:.4g} s) beyond its noise: a longer pass "
                             "cannot cost less; calibrate again on a quiet machine")
        return self

    def pass_seconds(self, n: int) -> float:
        """A pass of `n` tokens: the dearest of the calibrated passes up to n (prices are monotone), extended
        linearly beyond the table by its last step."""
        if n <= len(self.passes):
            return max(self.passes[:n])
        slope = self.passes[-1] - self.passes[-2] if len(self.passes) > 1 else 0.0
        return max(self.passes) + max(slope, 0.0) * (n - len(self.passes))

    def prefill_seconds(self, n: int) -> float:
        return self.prefill[0] + self.prefill[1] * n

    def model_seconds(self, model: Any) -> float:
        """Modelled seconds of one model's passes (`ModelStats`): its first passes, then the rest by length."""
        first = model.prefills * self.prefill[0] + model.prefill * self.prefill[1] if model.prefills else 0.0
        return first + sum(c * self.pass_seconds(int(n)) for n, c in model.passes.items())


class CostModel(BaseModel):
    format: Literal["bild-cost-model/1", "bild-cost-model/2"] = FORMAT
    small: PassCosts
    large: PassCosts
    overhead_per_pass: float = 0.0  # the engine's and policy's own seconds per model pass
    identity: dict[str, Any] = {}  # what the costs are valid for (the models' shapes, hardware, dtype, fast path)
    created: str = ""
    source: str = ""  # where a run took it from (a file, a cache, calibrated then), for its report
    noise: dict[str, Any] = {}  # how the calibration went: spreads, the machine's load, what was out of bounds

    def seconds(self, stats: Any) -> float:
        """Modelled seconds of a generation (or of several, added up) from its `GenerationStats`."""
        return sum(costs.model_seconds(model) + self.overhead_per_pass * model.calls
                   for costs, model in ((self.small, stats.small), (self.large, stats.large)))

    @classmethod
    def prior(cls, small_layers: int, large_layers: int) -> CostModel:
        """A guess before any calibration: a pass costs its model's depth (batch-1 decoding is bound by
        per-layer work and launches more than by width), a longer pass 5% more per extra token."""
        def costs(layers: int) -> PassCosts:
            return PassCosts(passes=[layers * (1 + 0.05 * i) for i in range(16)], prefill=(layers, 0.05 * layers))

        return cls(small=costs(small_layers), large=costs(large_layers), identity={"prior": True})

    @property
    def ratio(self) -> float:
        """A one-token small pass over a one-token large pass: how cheap a draft is."""
        return self.small.passes[0] / self.large.passes[0]

    def save(self, path: str | Path) -> None:
        write_atomic(Path(path), self.model_dump_json(indent=2) + "\n")  # never half-written

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        path = Path(path)
        try:
            found = cls(**json.loads(path.read_text()))
            if found.format == "bild-cost-model/1":
                log.warning("bild: cost model %s is of the first format: its spreads are unknown, so its noise was not "
                            "checked (calibrate again to record them)", path)
            return found
        except FileNotFoundError:
            raise BildError(f"cost model {str(path)!r} does not exist: make one with `bild calibrate`") from None
        except IsADirectoryError:
            raise BildError(f"cost model {str(path)!r} is a folder: give the JSON file of `bild calibrate`") from None
        except ValidationError as e:
            problem = describe_errors(e, where=lambda loc: ".".join(map(str, loc)) or "the file", first=True)
            if e.errors()[0]["type"] in ("value_error", "assertion_error"):
                raise BildError(f"cost model {str(path)!r}: {problem}") from None
            raise BildError(f"{str(path)!r} is not a bild cost model ({problem}): make one with "
                            "`bild calibrate`") from None
        except (OSError, ValueError, TypeError) as e:
            raise BildError(f"{str(path)!r} is not a bild cost model ({type(e).__name__}): make one with "
                            "`bild calibrate`") from None
