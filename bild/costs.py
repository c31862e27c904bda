"""A cost model: what a pass of each model costs on one device, by how many tokens it feeds.

BiLD's speed is fully determined by how many passes of each model ran and how many tokens each
fed (`GenerationStats`' histograms) times what such a pass costs where it runs. `CostModel`
holds those costs (seconds per pass feeding n = 1, 2, ... tokens; prefill as a line in the
prompt length; the engine's own time per pass), measured by `bild calibrate` with warm-up and
medians, with the device, dtype, versions and the pair it was measured on. `seconds(stats)` is
then the modelled time of a generation: deterministic for greedy decoding, free of the noise
of a shared machine, and portable (a study calibrated on a GPU can run its trials on CPUs).

Limits: a pass's cost also grows slowly with the context it attends over; the model prices
passes at the calibration's context (a typical prompt), so very long generations are priced
a little low. docs/bench.md reports how far modelled and measured speedups differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from bild.errors import BildError
from bild.files import write_atomic

FORMAT = "bild-cost-model/1"


class PassCosts(BaseModel):
    """One model's costs on one device."""

    passes: list[float]  # seconds of a pass feeding n tokens, n = 1 .. len(passes)
    prefill: tuple[float, float]  # seconds of the first pass: a + b * prompt tokens

    def pass_seconds(self, n: int) -> float:
        if n <= len(self.passes):
            return self.passes[n - 1]
        slope = self.passes[-1] - self.passes[-2] if len(self.passes) > 1 else 0.0
        return self.passes[-1] + max(slope, 0.0) * (n - len(self.passes))

    def prefill_seconds(self, n: int) -> float:
        return self.prefill[0] + self.prefill[1] * n

    def model_seconds(self, model: Any) -> float:
        """Modelled seconds of one model's passes (`ModelStats`): its first passes, then the rest by length."""
        first = model.prefills * self.prefill[0] + model.prefill * self.prefill[1] if model.prefills else 0.0
        return first + sum(c * self.pass_seconds(int(n)) for n, c in model.passes.items())


class CostModel(BaseModel):
    format: Literal["bild-cost-model/1"] = FORMAT
    small: PassCosts
    large: PassCosts
    overhead_per_pass: float = 0.0  # the engine's and policy's own seconds per model pass
    identity: dict[str, Any] = {}  # what the costs are valid for (the models' shapes, hardware, dtype, fast path)
    created: str = ""
    source: str = ""  # where a run took it from (a file, a cache, calibrated then), for its report

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
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise BildError(f"cost model {str(path)!r} does not exist: make one with `bild calibrate`") from None
        except IsADirectoryError:
            raise BildError(f"cost model {str(path)!r} is a folder: give the JSON file of `bild calibrate`") from None
        except (OSError, ValueError, TypeError, ValidationError) as e:
            raise BildError(f"{str(path)!r} is not a bild cost model ({type(e).__name__}): make one with "
                            "`bild calibrate`") from None
