"""The `bild` console command's entry point; the commands themselves live in bild/lab/cli.py.

Kept at this path so `python -m bild.cli` and the `bild` script stay stable; the decoding core
never imports the lab.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from bild.lab.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
