"""Every experiment config in experiments/ validates (so `bild run` on it cannot fail on a typo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bild.lab.experiment import load_experiment

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    options = load_experiment(path)
    assert options.command in ("bench", "tune") and options.description
