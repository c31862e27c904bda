"""The one exception type users see, and the one way unknown names are reported.

Every error a user can cause (bad paths, bad parameters, mismatched models, unreachable hub)
is raised as `BildError` with a one-line message that says what to do. The CLI prints it
without a traceback; library users can catch it. `unknown_name` builds the "did you mean"
message for every kind of name (policies, parameters, tasks, pairs, methods, options, ...), and
`describe_errors` turns pydantic's validation errors into that one line, for every settings model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any


class BildError(Exception):
    """A user-facing error with a one-line, actionable message."""


def unknown_name(kind: str, name: str, known: Iterable[str], plural: str | None = None) -> BildError:
    """`unknown policy 'exakt': did you mean 'exact'? known policies: bild, exact, ...`"""
    known = sorted(set(map(str, known)))
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return BildError(f"unknown {kind} {name!r}: {hint}known {plural or kind + 's'}: {', '.join(known) or 'none'}")


def describe_errors(error: Any, model: Any = None, where: Callable[[tuple], str] | None = None, got: bool = False,
                    first: bool = False) -> str:
    """A pydantic `ValidationError` as one line, `where: what`, joined by `; `. An unknown field of `model` gets
    its close matches; `where` names a location (a CLI flag, a config key; default: the dotted path); `got`
    adds the value given; `first`: the first problem only (the one a user fixes first)."""
    problems = []
    for err in error.errors()[:1] if first else error.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden" and model is not None:
            problems.append(str(unknown_name("parameter", ".".join(map(str, loc)), model.model_fields)))
            continue
        key = where(loc) if where else ".".join(map(str, loc))
        what = err["msg"].removeprefix("Value error, ")
        if got:
            what += f" (got {err.get('input')!r})"
        problems.append(f"{key}: {what}" if key else what)
    return "; ".join(problems)
