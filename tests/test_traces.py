"""`bild traces` and `bild train-policy`: labelled draft features, classifiers, the learned policy."""

from __future__ import annotations

import json

import pytest
import torch

from bild import BildError, GenerationConfig, generate
from bild.lab.tasks import Example
from bild.lab.traces import bootstrap_auc, collect_traces, roc_auc, train_classifier
from bild.lab.workload import Workload
from policies import make_policy

from conftest import PROMPTS


@pytest.fixture(scope="module")
def traces(load_pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "t.jsonl"
    examples = [Example(id=f"p{i}-{j}", prompt=p + " " * j) for i, p in enumerate(PROMPTS) for j in range(4)]
    work = Workload(load_pair("llama", 1), examples, GenerationConfig(max_new_tokens=20), progress=False)
    meta = collect_traces(work, path, hidden=True)
    return path, meta


def test_traces_hold_features_both_labels_and_the_hidden_state(traces):
    path, meta = traces
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == meta["rows"] > 50 and {r["mismatch"] for r in rows} == {0, 1}
    assert all(r["nll"] >= 0 and len(r["hidden"]) == 32 for r in rows)
    assert meta["vocab_size"] == 258 and meta["hidden_size"] == 32


@pytest.mark.parametrize(("rule", "model", "hidden"), [("exact", "logistic", False), ("nll", "mlp", False),
                                                       ("exact", "mlp", True)])
def test_a_trained_classifier_is_loaded_and_run_by_the_policy(load_pair, traces, tmp_path, rule, model, hidden):
    training = train_classifier(traces[0], tmp_path / "clf.json", rule=rule, threshold=1.0, model=model,
                                hidden=hidden)
    assert 0.5 < training["roc_auc_held_out"] <= 1.0
    low, high = training["roc_auc_interval"]
    assert low <= training["roc_auc_held_out"] <= high
    assert training["held_out_prompts"] > 0 and training["prompts"] > training["held_out_prompts"]
    saved = json.loads((tmp_path / "clf.json").read_text())
    assert saved["label"]["rule"] == rule and saved["hidden_size"] == (32 if hidden else 0)
    policy = make_policy("learned", {"path": str(tmp_path / "clf.json"), "threshold": 0.5, "rollback_rule": rule})
    result = generate(load_pair("llama", 1), "def add(", policy, GenerationConfig(max_new_tokens=12))
    assert result.stats.fallbacks + result.stats.draft_tokens == result.stats.small.calls


def test_roc_auc():
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    assert roc_auc(torch.tensor([0.1, 0.9, 0.5, 0.5]), torch.tensor([1, 0, 1, 0])) == 0.125
    low, high = bootstrap_auc(torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.tensor([1, 0, 1, 0]), ["a", "a", "b", "b"])
    assert low == high == 1.0


def test_bad_traces_and_classifier_files(tmp_path, traces):
    with pytest.raises(BildError, match="does not exist"):
        train_classifier(tmp_path / "none.jsonl", tmp_path / "c.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "max_prob": 0.5}\n')
    with pytest.raises(BildError, match=r"bad.jsonl:1: not a trace row"):
        train_classifier(bad, tmp_path / "c.json")
    train_classifier(traces[0], tmp_path / "good.json", rule="exact")
    good = json.loads((tmp_path / "good.json").read_text())
    for name, change, message in (
            ("nan", {"layers": [{"weight": [[float("nan")] * 11], "bias": [0.0]}]}, "non-finite"),
            ("zero", {"std": [0.0] * 11}, "zero spread"),
            ("shape", {"mean": [0.0] * 3}, "do not fit"),
            ("features", {"features": ["max_prob"]}, "trained on features"),
            ("format", {"format": "bild-learned-policy/1"}, "has format")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(BildError, match=message):
            make_policy("learned", {"path": str(tmp_path / f"{name}.json")})
    with pytest.raises(BildError, match="is a folder"):
        make_policy("learned", {"path": str(tmp_path)})
