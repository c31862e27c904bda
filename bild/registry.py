"""The policy registry: policies by decorator or by entry point, and their parameters.

    @register_policy("mine")
    class Mine(Policy): ...

A package of your own registers policies without touching this repository by declaring, in
its pyproject.toml,

    [project.entry-points."bild.policies"]
    mine = "my_package.policies:Mine"

The built-in policies (the top-level `policies` package) are declared the same way, so the core
never imports them. Entry points load lazily: only when a name is not among the registered
classes, or when all policies are listed. Unknown names fail with the close matches.

A policy's parameters as tools see them are bild/parameters.py's; where a policy's code comes
from, for a result's provenance, is the lab's (bild/lab/identity.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from bild.errors import BildError, describe_errors, unknown_name
from bild.policy import Policy

ENTRY_POINT_GROUP = "bild.policies"

_REGISTRY: dict[str, type[Policy]] = {}
_BROKEN: dict[str, str] = {}  # entry points that failed to import, and why (said once)
log = logging.getLogger("bild")


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


def unregister_policy(name: str) -> None:
    """Forget the policy registered as `name` (to redefine it, e.g. in a notebook)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(name: str, ep: Any) -> type[Policy]:
    try:
        cls = ep.load()
    except Exception as e:  # a broken third-party package must not take the CLI down
        raise BildError(f"policy {name!r} from entry point {ep.value!r} failed to import: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise BildError(f"entry point {name!r} = {ep.value!r} is not a subclass of bild.Policy")
    return _REGISTRY.get(name) or register_policy(name)(cls)


def policy_class(name: str) -> type[Policy]:
    """The class registered as `name` (loading entry points if needed)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return _load_entry_point(name, eps[name])
    raise unknown_name("policy", name, set(_REGISTRY) | set(eps), "policies")


def list_policies() -> dict[str, type[Policy]]:
    """Every policy, built-in and from entry points, by name. One entry point that fails to import is left out
    with one warning (naming it), not allowed to hide every other policy."""
    for name, ep in _entry_points().items():
        if name not in _REGISTRY and name not in _BROKEN:
            try:
                _load_entry_point(name, ep)
            except BildError as e:
                _BROKEN[name] = str(e)
                log.warning("bild: %s; it is left out", e)
    return dict(sorted(_REGISTRY.items()))


def make_policy(name: str | Policy | type[Policy], params: dict[str, Any] | None = None, **more: Any) -> Policy:
    """A validated policy from a name, a class or an instance, with parameters set (strings are coerced):
    `make_policy("bild", {"fallback_threshold": 0.5})` or `make_policy("bild", fallback_threshold=0.5)`."""
    if params is not None and not isinstance(params, dict):
        raise BildError(f"make_policy's parameters are a dict or keyword arguments, not {type(params).__name__}: "
                        "e.g. make_policy('bild', fallback_threshold=0.5)")
    params = {**(params or {}), **more}
    if isinstance(name, Policy):
        cls, values, label = type(name), {**name.model_dump(), **params}, type(name).name or type(name).__name__
    elif isinstance(name, type) and issubclass(name, Policy):
        cls, values, label = name, params, name.name or name.__name__
    elif isinstance(name, str):
        cls, values, label = policy_class(name), params, name
    else:
        raise BildError(f"a policy is a registered name, a Policy subclass or an instance, not {type(name).__name__}: "
                        "e.g. make_policy('bild', {'fallback_threshold': 0.5})")
    try:
        return cls(**values)
    except ValidationError as e:
        raise BildError(f"invalid parameters for policy {label!r}: {describe_errors(e, cls, got=True)}") from None
