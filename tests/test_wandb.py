"""W&B in offline mode, for real: what a bench and a tune leave on disk; failures only warn."""

from __future__ import annotations

import json

import pytest

from bild import GenerationConfig
from bild.lab.experiment import execute_bench
from bild.lab.options import BenchOptions, TuneOptions
from bild.lab.tasks import Example
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger

from conftest import cheap_costs


def runs(root):
    return sorted((root / "wandb").glob("offline-run-*"))


def tables(run) -> dict[str, dict]:
    return {p.name.split("_")[0]: json.loads(p.read_text()) for p in (run / "files" / "media" / "table").glob("*.json")}


def test_bench_logs_one_offline_run(pair_dirs, tmp_path):
    small, large = pair_dirs("llama", 1)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(", "reference": "a + b"}\n{"prompt": "for i in"}\n')
    execute_bench(BenchOptions(small=str(small), large=str(large), prompts=str(prompts), methods="large,exact",
                               generation=GenerationConfig(max_new_tokens=8), wandb_mode="offline",
                               wandb_dir=str(tmp_path / "wb")))
    (run,) = runs(tmp_path / "wb")
    record = (run / next(p.name for p in run.iterdir() if p.suffix == ".wandb")).read_bytes()
    for key in (b"methods", b"max_new_tokens", b"torch", b"tokens_per_s", b"speedup_vs_large"):
        assert key in record, key  # config, machine and summary keys are in the run's log
    samples = tables(run)["samples"]
    assert samples["columns"] == ["id", "method", "prompt", "text", "reference", "rank"]
    assert len(samples["data"]) == 4 and {row[1] for row in samples["data"]} == {"large", "exact"}


def test_tune_logs_a_run_per_trial_and_a_summary(load_pair, tmp_path):
    examples = [Example(id="0", prompt="def add(", reference="a + b"), Example(id="1", prompt="import os\n")]
    options = TuneOptions(policy="bild", trials=2, study="wb", storage=f"sqlite:///{tmp_path}/t.db", sampler_seed=0,
                          cost_model=cheap_costs(tmp_path), space={"fallback_threshold": "0:0.05"},
                          metric="agreement", generation=GenerationConfig(max_new_tokens=8), out_dir=str(tmp_path),
                          confirm=0)
    logger = WandbLogger("offline", "bild-test", group="wb", directory=tmp_path / "wb")
    run_tune(options, load_pair("llama", 1), examples, logger, setup={})
    found = runs(tmp_path / "wb")
    assert len(found) == 3
    assert sum("pareto" in tables(r) for r in found) == 1
    assert sum("samples" in tables(r) for r in found) == 2


def test_a_study_run_logs_every_trial_though_they_searched_different_parameters(load_pair, tmp_path, recwarn):
    """Trials of `bild` search `rollback_threshold` only under the `nll` rule: the trials table once failed on
    rows of different lengths (W&B warned and logged no table)."""
    examples = [Example(id="0", prompt="def add(", reference="a + b"), Example(id="1", prompt="import os\n")]
    options = TuneOptions(policy="bild", trials=2, study="wbs", storage=f"sqlite:///{tmp_path}/t.db", sampler_seed=0,
                          cost_model=cheap_costs(tmp_path), space={"fallback_threshold": "0:0.05"},
                          metric="agreement", generation=GenerationConfig(max_new_tokens=8), out_dir=str(tmp_path),
                          confirm=0, wandb_per="study")
    run_tune(options, load_pair("llama", 1), examples, WandbLogger("offline", "bild-test", directory=tmp_path / "wb"),
             setup={})
    (run,) = runs(tmp_path / "wb")
    trials = tables(run)["trials"]
    assert {"rollback_rule", "rollback_threshold"} <= set(trials["columns"]) and len(trials["data"]) == 2
    rules = {row[trials["columns"].index("rollback_rule")] for row in trials["data"]}
    assert rules == {"exact", "nll"}  # one row without the threshold, one with it
    assert not [w for w in recwarn if "W&B logging failed" in str(w.message)]


def test_a_wandb_failure_warns_and_does_not_stop(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="W&B logging failed"):
        WandbLogger("offline", directory=blocker / "wandb").log_run("x", {"a": 1}, {"b": 2})
