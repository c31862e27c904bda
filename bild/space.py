"""Search spaces derived from a policy's pydantic fields, so a new policy is tunable with no code.

A float or int field with both bounds (`Field(ge=..., le=...)`, or gt/lt) becomes an Optuna
distribution over them; a bool or `Literal[...]` field becomes categorical. A field without
bounds keeps its default unless the user gives a range. Overrides (`KEY=LOW:HIGH`, or
`KEY=A|B|C` for choices, or `KEY=VALUE` to fix a value) narrow or fix a parameter.
"""

from __future__ import annotations

import typing
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from bild.errors import BildError
from bild.policy import Policy


def _bounds(info) -> tuple[float | None, float | None]:
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", getattr(m, "gt", low))
        high = getattr(m, "le", getattr(m, "lt", high))
    return low, high


def _field_distribution(info) -> BaseDistribution | None:
    annotation = info.annotation
    if annotation is bool:
        return CategoricalDistribution([False, True])
    if typing.get_origin(annotation) is typing.Literal:
        return CategoricalDistribution(list(typing.get_args(annotation)))
    low, high = _bounds(info)
    if low is None or high is None:
        return None
    if annotation is int:
        return IntDistribution(int(low), int(high))
    if annotation is float:
        return FloatDistribution(float(low), float(high))
    return None


def _override(name: str, text: str, annotation: Any) -> BaseDistribution | Any:
    cast = int if annotation is int else float
    try:
        if ":" in text:
            low, high = (cast(v) for v in text.split(":", 1))
            if low > high:
                raise ValueError
            return IntDistribution(low, high) if cast is int else FloatDistribution(low, high)
        if "|" in text:
            return CategoricalDistribution([cast(v) if annotation in (int, float) else v for v in text.split("|")])
        return cast(text) if annotation in (int, float) else text
    except ValueError:
        raise BildError(f"search range {name}={text!r} is not LOW:HIGH (LOW <= HIGH), A|B|C or one value") from None


Space = dict[str, BaseDistribution]


def search_space(cls: type[Policy], overrides: dict[str, str] | None = None) -> tuple[Space, dict[str, Any]]:
    """(distributions to search, fixed values) for a policy class."""
    overrides = overrides or {}
    unknown = set(overrides) - set(cls.model_fields)
    if unknown:
        raise BildError(f"policy {cls.name!r} has no parameter {', '.join(map(repr, sorted(unknown)))}; "
                        f"it takes: {', '.join(cls.model_fields) or 'none'}")
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        value = _override(name, overrides[name], info.annotation) if name in overrides else _field_distribution(info)
        if isinstance(value, BaseDistribution):
            space[name] = value
        elif value is not None:
            fixed[name] = value
        elif info.is_required():
            raise BildError(f"policy {cls.name!r} needs {name!r}, which is not searched: fix it with "
                            f"--space {name}=VALUE")
    if not space:
        raise BildError(f"policy {cls.name!r} has no tunable parameters (no bounded fields); give ranges "
                        "with --space KEY=LOW:HIGH or pick a policy with parameters (see `bild policies`)")
    return space, fixed
