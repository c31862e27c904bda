"""`bild traces` and `bild train-policy`: labelled draft features, a classifier, the learned policy."""

from __future__ import annotations

import json

import pytest

from bild import BildError, GenerationConfig, generate
from bild.lab.tasks import Example
from bild.lab.traces import collect_traces, roc_auc, train_classifier
from policies import make_policy

from conftest import PROMPTS


def test_traces_train_a_classifier_the_learned_policy_loads(load_pair, tmp_path):
    pair = load_pair("llama", 1)
    examples = [Example(id=f"p{i}-{j}", prompt=p) for i, p in enumerate(PROMPTS) for j in range(3)]
    meta = collect_traces(pair, examples, GenerationConfig(max_new_tokens=20), tmp_path / "t.jsonl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == meta["rows"] > 50 and {r["rejected"] for r in rows} == {0, 1}
    assert json.loads((tmp_path / "t.jsonl.meta.json").read_text())["vocab_size"] == 258

    training = train_classifier(tmp_path / "t.jsonl", tmp_path / "clf.json")
    assert 0.5 < training["roc_auc_held_out"] <= 1.0
    assert training["held_out_prompts"] > 0 and training["prompts"] > training["held_out_prompts"]
    saved = json.loads((tmp_path / "clf.json").read_text())
    assert saved["training"]["roc_auc_held_out"] == training["roc_auc_held_out"]
    policy = make_policy("learned", {"path": str(tmp_path / "clf.json"), "threshold": 0.5})
    result = generate(pair, "def add(", policy, GenerationConfig(max_new_tokens=12))
    assert result.stats.fallbacks + result.stats.draft_tokens == result.stats.small_calls


def test_roc_auc():
    import torch

    assert roc_auc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5


def test_bad_traces(tmp_path):
    with pytest.raises(BildError, match="does not exist"):
        train_classifier(tmp_path / "none.jsonl", tmp_path / "c.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "max_prob": 0.5}\n')
    with pytest.raises(BildError, match=r"bad.jsonl:1: not a trace row"):
        train_classifier(bad, tmp_path / "c.json")
