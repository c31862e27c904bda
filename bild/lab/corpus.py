"""The local Python standard library as an offline corpus, split deterministically.

A file is held out when the SHA-256 of its path relative to the stdlib root falls in the lowest
`HELD_OUT_PERCENT` percent: the split does not depend on which files a machine has, only on
their names. The local pair trains on the rest; the `pycode` task cuts prompts from the held-out
files only.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

HELD_OUT_PERCENT = 5


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def hash_fraction(text: str, resolution: int = 1000) -> float:
    """Where `text` falls in [0, 1) by its SHA-256: the one deterministic split of files, prompts and traces
    (it depends on the name alone, not on what else a machine holds)."""
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % resolution / resolution


def is_held_out(relative: str) -> bool:
    return hash_fraction(relative, 100) < HELD_OUT_PERCENT / 100


def stdlib_files(held_out: bool) -> list[Path]:
    """The stdlib's .py files (sorted, site-packages excluded) on one side of the split."""
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in path.parts or is_held_out(rel) != held_out:
            continue
        files.append(path)
    return files


def read_texts(files: list[Path], max_chars: int | None = None) -> Iterator[tuple[Path, str]]:
    """Each readable file with its contents (undecodable ones skipped), until `max_chars` were yielded."""
    total = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield path, text
        total += len(text)
        if max_chars is not None and total >= max_chars:
            return
