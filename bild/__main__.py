"""`python -m bild ...` and `torchrun ... -m bild ...`: the `bild` command (torchrun's own options end before
`-m`, so `--n` and `--nproc-per-node` never clash)."""

import sys

from bild.cli import main

sys.exit(main())
