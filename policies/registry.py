"""The policy registry: built-ins by decorator, third-party policies by entry point.

    @register_policy("mine")
    class Mine(Policy): ...

A package of your own registers policies without touching this repo by declaring, in its
pyproject.toml,

    [project.entry-points."bild.policies"]
    mine = "my_package.policies:Mine"

Entry points load lazily: only when a name is not among the registered classes, or when all
policies are listed. Unknown names fail with the close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from bild.errors import BildError
from bild.policy import Policy

ENTRY_POINT_GROUP = "bild.policies"

_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: make a `Policy` subclass available under `name`."""

    def add(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@register_policy({name!r}) must decorate a subclass of bild.Policy")
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"policy name {name!r} is already taken by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(name: str, ep: Any) -> type[Policy]:
    try:
        cls = ep.load()
    except Exception as e:  # a broken third-party package must not take the CLI down
        raise BildError(f"policy {name!r} from entry point {ep.value!r} failed to import: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise BildError(f"entry point {name!r} = {ep.value!r} is not a subclass of bild.Policy")
    return register_policy(name)(cls)


def policy_class(name: str) -> type[Policy]:
    """The class registered as `name` (loading entry points if needed)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return _load_entry_point(name, eps[name])
    known = sorted(set(_REGISTRY) | set(eps))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise BildError(f"unknown policy {name!r}: {hint}known policies: {', '.join(known)}")


def list_policies() -> dict[str, type[Policy]]:
    """Every policy, built-in and from entry points, by name."""
    for name, ep in _entry_points().items():
        if name not in _REGISTRY:
            _load_entry_point(name, ep)
    return dict(sorted(_REGISTRY.items()))


def parse_params(items: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; pydantic coerces the values per field."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BildError(f"parameter {item!r} is not KEY=VALUE (e.g. fallback_threshold=0.5)")
        params[key.strip()] = value.strip()
    return params


def make_policy(name: str | Policy, params: dict[str, Any] | None = None) -> Policy:
    """A policy instance from a name and parameters (strings are coerced), with readable errors."""
    if isinstance(name, Policy):
        return name.model_copy(update=params or {}) if params else name
    cls = policy_class(name)
    try:
        return cls(**(params or {}))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(map(str, err["loc"]))
            if err["type"] == "extra_forbidden":
                fields = list(cls.model_fields)
                close = difflib.get_close_matches(key, fields, n=1, cutoff=0.4)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown parameter {key!r}{hint}; {name} takes: {', '.join(fields) or 'none'}")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise BildError(f"invalid parameters for policy {name!r}: {'; '.join(problems)}") from e
