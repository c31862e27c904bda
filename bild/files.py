"""Writing a file whole: what the core saves (a cost model) and every report of the lab.

A reader sees the old file or the new one, never half of either: the text goes to a temporary
file beside the target (named for this process, so two writers never share one), which then
replaces the target in one rename. A missing folder is created first.
"""

from __future__ import annotations

import os
from pathlib import Path

from bild.errors import BildError


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: an interruption leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BildError(f"cannot write {str(path)!r}: {e.strerror}") from None
