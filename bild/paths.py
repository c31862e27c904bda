"""Where bild keeps what it builds once and reuses: `$BILD_CACHE`, default `~/.cache/bild`.

Under it: `gguf/` (GGUF files dequantized into plain model folders, one per file content),
`dtype/` (which CPU dtype decodes a model shape faster on this machine), `pairs/` (the lab's
offline local pair and the fetched named pairs), `costs/` (one cost model per pair shape,
device, dtype and fast path) and `datasets/` (what `datasets` builds from a local task copy,
one folder per copy and content, so an edited copy is never read from a stale cache).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("BILD_CACHE", Path.home() / ".cache" / "bild"))
