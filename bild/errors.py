"""The one exception type users see, and the one way unknown names are reported.

Every error a user can cause (bad paths, bad parameters, mismatched models, unreachable hub)
is raised as `BildError` with a one-line message that says what to do. The CLI prints it
without a traceback; library users can catch it. `unknown_name` builds the "did you mean"
message for every kind of name (policies, parameters, tasks, pairs, methods, options, ...).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BildError(Exception):
    """A user-facing error with a one-line, actionable message."""


def unknown_name(kind: str, name: str, known: Iterable[str], plural: str | None = None) -> BildError:
    """`unknown policy 'exakt': did you mean 'exact'? known policies: bild, exact, ...`"""
    known = sorted(set(map(str, known)))
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return BildError(f"unknown {kind} {name!r}: {hint}known {plural or kind + 's'}: {', '.join(known) or 'none'}")
