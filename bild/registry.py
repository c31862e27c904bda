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

`parameters(cls)` reads a policy's fields once for everyone: `bild policies` prints them and
the tuner derives its search space from them (`ge`/`le` bounds are closed, `gt`/`lt` open).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bild.errors import BildError, unknown_name
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
        raise BildError(f"invalid parameters for policy {label!r}: {describe_errors(e, cls)}") from None


def describe_errors(error: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's errors as one line; unknown fields get their close matches."""
    problems = []
    for err in error.errors():
        key = ".".join(map(str, err["loc"]))
        if err["type"] == "extra_forbidden":
            problems.append(str(unknown_name("parameter", key, model.model_fields)))
        else:
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})" if key else err["msg"])
    return "; ".join(problems)


# --- where a policy comes from --------------------------------------------------------------------


def policy_origin(cls: type[Policy]) -> dict[str, Any]:
    """Where `cls` comes from, for a result's provenance: the distribution and version behind its entry point,
    else its module and file; with a hash of that file (`code`) when it can be read, `{"source": "unknown"}`
    when neither can be found."""
    import inspect

    target = f"{cls.__module__}:{cls.__qualname__}"
    code = {"code": digest} if (digest := code_hash(cls)) else {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == target and ep.dist is not None:
            return {"source": "entry point", "name": ep.name, "distribution": ep.dist.metadata["Name"],
                    "version": ep.dist.version, "object": target, **code}
    if not code:  # defined in a notebook cell or with exec
        return {"source": "unknown", "object": target}
    return {"source": "module", "object": target, "file": inspect.getsourcefile(cls), **code}


def code_hash(cls: type[Policy]) -> str | None:
    """A hash of the file that defines `cls`: its module-level helpers and constants decide too, and an editable
    install keeps its version while the code changes. None when there is no such file."""
    import hashlib
    import inspect

    try:
        return hashlib.sha256(Path(inspect.getsourcefile(cls)).read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


# --- parameters ----------------------------------------------------------------------------------


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
