"""Shared fixtures: tiny real pairs saved to disk once per session, loaded through the real path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; fail fast, not after retries

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

import bild.forward
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


def cheap_costs(folder: Path) -> str:
    """A cost model file where a draft costs a twentieth of a verification and a verification the same whatever
    its length: on it a tiny pair's trials that draft beat the large model alone, so a study's front is not
    empty (a calibrated tiny pair's drafts are dear, and its small model is unsure)."""
    from bild.costs import CostModel, PassCosts

    path = Path(folder) / "cheap-costs.json"
    CostModel(small=PassCosts(passes=[0.6, 0.6], prefill=(0.6, 0.01)),
              large=PassCosts(passes=[12.0] * 16, prefill=(12.0, 0.1)),
              identity={"fast_path": "off"}).save(path)  # what it prices: the tiny pairs' path on a CPU
    return str(path)


def one_error(stderr: str) -> str:
    """The one error line of a failed command (progress lines of its own, `bild <command>: ...`, may precede it;
    no traceback, no second error)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines, stderr
    assert lines[-1].startswith("bild: error: ") and sum(line.startswith("bild: error") for line in lines) == 1, stderr
    assert all(line.startswith("bild ") for line in lines[:-1]), stderr
    return lines[-1]


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


class HoldsState(Policy):
    """Holds every draft's hidden state and logits, each beside a copy of its values at the time (in its state)."""

    def new_state(self):
        return []

    def fallback(self, step: DraftStep) -> bool:
        step.state.extend([(step.hidden, step.hidden.clone()), (step.logits, step.logits.clone())])
        return False

    def rollback(self, verification: Verification) -> int:
        return verification.first_mismatch


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


class Replaying:
    """A CPU stand-in for `graph`'s CUDA-graph capture that behaves like one: the step runs once into static
    output tensors, and every replay copies its results into those same tensors, so whatever held an
    output sees the next replay's values, as on a GPU."""

    def __init__(self, device=None) -> None:
        self.device = device  # the model's device, as CudaGraphs is given
        self.captured: list[int] = []  # the bucket sizes captured, in order

    def __call__(self, step, undo):
        outputs = step()
        undo()
        self.captured.append(outputs[0].shape[0])

        def replay():
            for static, fresh in zip(outputs, step(), strict=True):
                static.copy_(fresh)
            return outputs

        return replay


@pytest.fixture
def fake_graphs(monkeypatch):
    """`graph` on the CPU: runners capture with `Replaying`; returns the captures made, one per runner."""
    made: list[Replaying] = []
    resolve = bild.forward.resolve_fast_path

    def capture(device=None) -> Replaying:
        made.append(Replaying(device))
        return made[-1]

    def resolve_on_cpu(requested, model, label="model"):
        return "graph" if requested == "graph" else resolve(requested, model, label)

    monkeypatch.setattr(bild.forward, "CudaGraphs", capture)
    monkeypatch.setattr(bild.forward, "resolve_fast_path", resolve_on_cpu)
    return made
