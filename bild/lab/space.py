"""Search spaces from a policy's parameters, so a new policy is tunable with no code.

Every parameter comes from `bild.parameters.parameters`: a float or int with both bounds becomes an
Optuna distribution over them (`ge`/`le` closed, `gt`/`lt` open, as pydantic means them), a bool
or `Literal[...]` a categorical one; anything else keeps its default unless fixed. Sampling is
define-by-run: a parameter is only sampled in trials where it applies (`applies_when`, e.g. the
NLL threshold only under the `nll` rollback rule), and choices that only differ from others when
sampling (`sampling_only`, e.g. the `rejection` rule) are dropped under greedy decoding.

Overrides (`KEY=LOW:HIGH`, `KEY=A|B|C`, `KEY=VALUE`) narrow, choose or fix a parameter; they are
checked against the parameter's bounds and choices before anything is measured.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bild.errors import BildError, unknown_name
from bild.parameters import Parameter, parameters
from bild.policy import Policy

GRID_POINTS = 5  # values per continuous parameter for `--sampler grid`


def _cast(p: Parameter, text: str) -> Any:
    if p.type == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError
        return text.lower() == "true"
    if p.type == "int":
        return int(text)
    if p.type == "float":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    if p.choices is not None:
        return next(c for c in p.choices if str(c) == text)  # StopIteration: not a choice
    return text


def _check_value(p: Parameter, value: Any, what: str) -> None:
    if p.choices is not None and value not in p.choices:
        raise BildError(f"--space {p.name}: {value!r} is not one of {'|'.join(map(str, p.choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if p.low is not None and (value < p.low or (p.low_open and value == p.low)):
            raise BildError(f"--space {p.name}: {what} {value} is below the parameter's bound "
                            f"({'>' if p.low_open else '>='} {p.low})")
        if p.high is not None and (value > p.high or (p.high_open and value == p.high)):
            raise BildError(f"--space {p.name}: {what} {value} is above the parameter's bound "
                            f"({'<' if p.high_open else '<='} {p.high})")


def _range(p: Parameter, low: float, high: float) -> BaseDistribution:
    """The distribution over [low, high], excluding an open bound of the parameter itself."""
    if p.type == "int":
        low = int(low) + (p.low_open and low == p.low)
        high = int(high) - (p.high_open and high == p.high)
        return IntDistribution(low, high)
    if p.low_open and low == p.low:
        low = math.nextafter(low, math.inf)
    if p.high_open and high == p.high:
        high = math.nextafter(high, -math.inf)
    return FloatDistribution(low, high)


def _from_override(p: Parameter, text: str) -> BaseDistribution | Any:
    try:
        if ":" in text and p.type in ("int", "float"):
            low, high = (_cast(p, v) for v in text.split(":", 1))
            if low > high:
                raise ValueError
            _check_value(p, low, "LOW")
            _check_value(p, high, "HIGH")
            return _range(p, low, high)
        if "|" in text:
            choices = [_cast(p, v) for v in text.split("|")]
            for c in choices:
                _check_value(p, c, "choice")
            return CategoricalDistribution(choices)
        value = _cast(p, text)
    except (ValueError, StopIteration):
        domain = "|".join(map(str, p.choices)) if p.choices else f"a {p.type}"
        raise BildError(f"--space {p.name}={text!r} is not LOW:HIGH (LOW <= HIGH), A|B|C or one value "
                        f"({domain})") from None
    _check_value(p, value, "value")
    return value


def _default_distribution(p: Parameter, greedy: bool) -> BaseDistribution | None:
    if p.type == "bool":
        return CategoricalDistribution([False, True])
    if p.choices is not None:
        choices = [c for c in p.choices if not (greedy and c in p.sampling_only)]
        return CategoricalDistribution(choices) if len(choices) > 1 else None
    if p.type in ("int", "float") and p.low is not None and p.high is not None:
        return _range(p, p.low, p.high)
    return None


class SearchSpace:
    """What a tuner samples for one policy class: distributions, fixed values, and conditions."""

    def __init__(self, cls: type[Policy], overrides: dict[str, str] | None = None, greedy: bool = True) -> None:
        self.cls = cls
        params = {p.name: p for p in parameters(cls)}
        for name in overrides or {}:
            if name not in params:
                raise unknown_name(f"parameter of policy {cls.name!r}", name, params,
                                   f"parameters (it takes: {', '.join(params) or 'none'})")
        self.params = params
        self.distributions: dict[str, BaseDistribution] = {}
        self.fixed: dict[str, Any] = {}
        for name, p in params.items():
            given = (overrides or {}).get(name)
            value = _default_distribution(p, greedy) if given is None else _from_override(p, given)
            if isinstance(value, BaseDistribution):
                self.distributions[name] = value
            elif value is not None:
                self.fixed[name] = value
            elif p.required:
                raise BildError(f"policy {cls.name!r} needs {name!r}, which is not searched: fix it with "
                                f"--space {name}=VALUE")
        if not self.distributions:
            raise BildError(f"policy {cls.name!r} has no tunable parameters (no bounded fields); give ranges "
                            "with --space KEY=LOW:HIGH or pick a policy with parameters (see `bild policies`)")
        # parameters others depend on are sampled first
        needed = {k for p in params.values() for k in p.applies_when}
        self.order = sorted(self.distributions, key=lambda n: n not in needed)

    def applies(self, name: str, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(k, self.cls.model_fields[k].default) in values
                   for k, values in self.params[name].applies_when.items())

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The parameters of one trial: sampled where they apply, fixed ones, defaults elsewhere."""
        chosen = dict(self.fixed)
        for name in self.order:
            if self.applies(name, chosen):
                chosen[name] = suggest(trial, name, self.distributions[name])
        return chosen

    def size(self, most: int = 100_000) -> int | None:
        """How many distinct settings the space holds, when it holds few (categorical and integer parameters,
        counted where they apply); None for a continuous space or more than `most`."""
        values: dict[str, list[Any]] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and (dist.high - dist.low) // (dist.step or 1) < most:
                values[name] = list(range(dist.low, dist.high + 1, dist.step or 1))
            elif dist.low == dist.high:
                values[name] = [dist.low]
            else:
                return None
        if math.prod(len(v) for v in values.values()) > most:
            return None
        settings = {()}
        for name in self.order:  # each setting extended by the values of the parameters that apply to it
            settings = {(*s, (name, v)) for s in settings for v in (
                values[name] if self.applies(name, {**self.fixed, **dict(s)}) else [None])}
        return len({tuple((k, v) for k, v in s if v is not None) for s in settings})

    def grid(self) -> dict[str, list[Any]]:
        """Values per sampled parameter for Optuna's GridSampler."""
        points = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                points[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and dist.high - dist.low < 2 * GRID_POINTS:
                points[name] = list(range(dist.low, dist.high + 1))
            else:
                step = (dist.high - dist.low) / (GRID_POINTS - 1)
                values = [dist.low + i * step for i in range(GRID_POINTS)]
                points[name] = sorted({round(v) for v in values}) if isinstance(dist, IntDistribution) else values
        return points


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)
