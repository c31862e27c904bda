"""A policy's parameters as tools see them, read from its pydantic fields once for everyone:
`bild policies` prints them and the tuner derives its search space from them (`ge`/`le` bounds
are closed, `gt`/`lt` open; `applies_when` and `sampling_only` come from a field's
`json_schema_extra`).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from bild.policy import Policy


class Parameter(BaseModel):
    """One policy parameter as tools see it."""

    name: str
    type: str  # float, int, bool, str or choice
    default: Any = None
    required: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `gt`: the low bound itself is not allowed
    high_open: bool = False  # `lt`
    choices: list[Any] | None = None
    description: str = ""
    applies_when: dict[str, list[Any]] = {}  # only meaningful when these parameters take these values
    sampling_only: list[Any] = []  # choices that only differ from others when sampling


def parameters(cls: type[Policy]) -> list[Parameter]:
    """`cls`'s fields with their types, defaults, bounds, choices and conditions."""
    found = []
    for name, info in cls.model_fields.items():
        p = Parameter(name=name, type=getattr(info.annotation, "__name__", "any"), required=info.is_required(),
                      default=None if info.is_required() else info.default, description=info.description or "")
        if typing.get_origin(info.annotation) is typing.Literal:
            p.type, p.choices = "choice", list(typing.get_args(info.annotation))
        for m in info.metadata:
            for attr, bound, is_open in (("ge", "low", False), ("gt", "low", True), ("le", "high", False),
                                         ("lt", "high", True)):
                if getattr(m, attr, None) is not None:
                    setattr(p, bound, getattr(m, attr))
                    setattr(p, f"{bound}_open", is_open)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        p.applies_when = {k: v if isinstance(v, list) else [v] for k, v in extra.get("applies_when", {}).items()}
        p.sampling_only = list(extra.get("sampling_only", []))
        found.append(p)
    return found
