"""The offline local pair: built from the stdlib, cached, loadable as an ordinary pair."""

from __future__ import annotations

import pytest

from bild import BildError, GenerationConfig, ModelPair, generate, generate_single
from bild.lab.corpus import stdlib_files
from bild.lab.localpair import BUILD, PRESETS, ModelShape, Preset, build_local_pair
from policies import make_policy


def test_held_out_files_are_disjoint_from_training_files():
    held, train = set(stdlib_files(held_out=True)), set(stdlib_files(held_out=False))
    assert held and train and not held & train
    assert 0.02 < len(held) / (len(held) + len(train)) < 0.10


TINY = Preset(vocab_size=300, corpus_chars=200_000, context=32, batch=2, lr=1e-3, hidden=32, heads=2, mlp=64,
              small=ModelShape(layers=1, train_steps=3), large=ModelShape(layers=2, train_steps=5), minutes=0.1)


def test_build_caches_a_loadable_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    root = build_local_pair("tiny")
    assert root == tmp_path / "pairs" / f"stdlib-tiny-v{BUILD}"
    mtime = (root / "large" / "config.json").stat().st_mtime
    assert build_local_pair("tiny") == root  # cached: not rebuilt
    assert (root / "large" / "config.json").stat().st_mtime == mtime
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no half-built leftovers

    pair = ModelPair.from_pretrained(str(root / "small"), str(root / "large"), device="cpu")
    assert pair.small.config.num_hidden_layers == 1 and pair.large.config.num_hidden_layers == 2
    cfg = GenerationConfig(max_new_tokens=8)
    assert (generate(pair, "import os\n", make_policy("exact"), cfg).token_ids
            == generate_single(pair, "import os\n", "large", cfg).token_ids)


def test_a_rebuild_is_the_same_pair(tmp_path, monkeypatch):
    """Steps, not wall time: the demo's figures must not depend on how fast the machine trained."""
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    root = build_local_pair("tiny")
    first = {name: (root / name / "model.safetensors").read_bytes() for name in ("small", "large")}
    build_local_pair("tiny", force=True)
    assert first == {name: (root / name / "model.safetensors").read_bytes() for name in ("small", "large")}


def test_unknown_preset():
    with pytest.raises(BildError, match="use one of cpu, gpu"):
        build_local_pair("huge")
