"""Shared fixtures: tiny real pairs saved to disk once per session, loaded through the real path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; fail fast, not after retries

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from bild import ModelPair, Policy
from bild.policy import DraftStep, Verification

from tiny import build_pair

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(2)

SHARED = Path(os.environ.get("BILD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
PYCODE = SHARED / "models" / "pycode-pair"
HELDOUT = SHARED / "data" / "pycode_stdlib_heldout.jsonl"

PROMPTS = ["def add(", "for i in", "the quick", "class Point:\n", "import os\n", "x", "self.x = x", " "]


class AlwaysFallback(Policy):
    """Every token comes from the large model."""

    def fallback(self, step: DraftStep) -> bool:
        return True

    def rollback(self, verification: Verification) -> int:
        return verification.n


class NeverFallback(Policy):
    """Every draft is kept: the small model alone decides."""

    def fallback(self, step: DraftStep) -> bool:
        return False

    def rollback(self, verification: Verification) -> int:
        return verification.n


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    cache: dict[tuple[str, int], tuple[Path, Path]] = {}

    def get(family: str = "llama", seed: int = 0) -> tuple[Path, Path]:
        if (family, seed) not in cache:
            cache[(family, seed)] = build_pair(root, family, seed)
        return cache[(family, seed)]

    return get


@pytest.fixture(scope="session")
def load_pair(pair_dirs):
    loaded: dict[tuple[str, int], ModelPair] = {}

    def get(family: str = "llama", seed: int = 0) -> ModelPair:
        if (family, seed) not in loaded:
            small, large = pair_dirs(family, seed)
            loaded[(family, seed)] = ModelPair.from_pretrained(str(small), str(large), device="cpu")
        return loaded[(family, seed)]

    return get


@pytest.fixture(scope="session")
def pycode_pair():
    if not PYCODE.exists():
        pytest.skip(f"{PYCODE} is absent")
    return ModelPair.from_pretrained(str(PYCODE / "small"), str(PYCODE / "large"), device="cpu")
