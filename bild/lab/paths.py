"""Where bild keeps what it builds once and reuses: `$BILD_CACHE`, default `~/.cache/bild`.

Under it: `pairs/` (the offline local pair), `costs/` (one cost model per pair shape, device, dtype and
fast path) and `datasets/` (what `datasets` builds from a local task copy, one folder per copy and
content, so an edited copy is never read from a stale cache).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("BILD_CACHE", Path.home() / ".cache" / "bild"))
