"""What makes two results comparable, said by the results themselves: one cost model per pair shape and device
(cached, reused, flagged by compare when two reports differ), where each policy came from, runs named after the
pair, and the small things a user trips over (help defaults, the W&B folder, make_policy's two forms)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bild import BildError, GenerationConfig, make_policy
from bild.lab.cli import main as cli
from bild.lab.experiment import execute_bench
from bild.lab.identity import policy_origin
from bild.lab.options import BenchOptions
from policies import register_policy, unregister_policy

from conftest import NeverFallback


@pytest.fixture
def bench_options(pair_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "cache"))
    small, large = map(str, pair_dirs("llama", 1))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add("}\n{"prompt": "for i in"}\n')

    def make(**kw) -> BenchOptions:
        return BenchOptions(**{"small": small, "large": large, "prompts": str(prompts), "methods": "large,exact",
                               "generation": GenerationConfig(max_new_tokens=6), "wandb_mode": "disabled", **kw})

    return make


def test_two_benches_of_one_pair_share_one_cost_model(bench_options, tmp_path, capsys):
    first = execute_bench(bench_options(json_out=str(tmp_path / "a.json")))
    assert "calibrating what each pass costs" in capsys.readouterr().err
    second = execute_bench(bench_options(json_out=str(tmp_path / "b.json")))
    assert "calibrating" not in capsys.readouterr().err
    assert first["cost_model"]["small"] == second["cost_model"]["small"]
    assert first["cost_model"]["source"].startswith("calibrated") and second["cost_model"]["source"].startswith("cache")
    assert cli(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "cost models: one for all reports" in capsys.readouterr().out
    execute_bench(bench_options(json_out=str(tmp_path / "c.json"), recalibrate=True))
    assert cli(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 0
    assert "cost models DIFFER" in capsys.readouterr().out  # a fresh calibration never times alike


def test_a_corrupt_cost_model_cache_is_measured_again_with_one_warning(bench_options, tmp_path, capsys):
    execute_bench(bench_options())
    (cached,) = (tmp_path / "cache" / "costs").glob("*.json")
    cached.write_text('{"format": "bild-cost-model/0"}')
    report = execute_bench(bench_options())
    err = capsys.readouterr().err
    assert err.count("warning: the cached cost model is unreadable") == 1 and "calibrating" in err
    assert report["cost_model"]["small"]["passes"]


class FromThisFile(NeverFallback):
    """A policy registered by decorator in a test module."""


def test_every_method_records_where_its_policy_comes_from(bench_options, caplog):
    register_policy("from-this-file")(FromThisFile)
    exec_defined: dict = {}
    exec("from conftest import NeverFallback\nclass Nowhere(NeverFallback):\n    pass\n", exec_defined)
    register_policy("nowhere")(exec_defined["Nowhere"])
    try:
        with caplog.at_level("WARNING", logger="bild"):
            report = execute_bench(bench_options(methods="large,exact,from-this-file,nowhere,nowhere@fast_path=static"))
        rows = report["methods"]
        assert rows["large"]["origin"] is None
        assert rows["exact"]["origin"]["source"] == "entry point"
        assert rows["exact"]["origin"]["distribution"] == "big-little-decoder"
        mine = rows["from-this-file"]["origin"]
        assert mine["source"] == "module" and mine["file"] == __file__ and len(mine["code"]) == 16
        assert rows["nowhere"]["origin"]["source"] == "unknown"
        assert sum("cannot be found" in r.getMessage() for r in caplog.records) == 1  # said once
    finally:
        unregister_policy("from-this-file")
        unregister_policy("nowhere")
    assert policy_origin(FromThisFile) == mine


def test_runs_and_plots_are_named_after_the_pair_as_given(bench_options, tmp_path):
    execute_bench(bench_options(wandb_mode="offline", wandb_dir=str(tmp_path / "wandb"), plot=str(tmp_path / "p.png")))
    (run,) = (tmp_path / "wandb").glob("offline-run-*")  # --wandb-dir .../wandb is the run folder itself
    record = json.loads((run / "files" / "bild-run.json").read_text())
    assert record["name"] == "bench:llama-1-small+llama-1-large:p"
    assert record["config"]["policies"]["exact"]["source"] == "entry point"


def test_make_policy_takes_parameters_as_a_dict_or_as_keywords():
    assert make_policy("bild", fallback_threshold=0.3) == make_policy("bild", {"fallback_threshold": 0.3})
    assert make_policy("bild", {"rollback_rule": "exact"}, fallback_threshold=0.3).params()["fallback_threshold"] == 0.3
    with pytest.raises(BildError, match="a dict or keyword arguments"):
        make_policy("bild", 0.3)


def test_help_shows_defaults_as_they_are():
    text = subprocess.run([sys.executable, "-m", "bild.cli", "bench", "--help"], capture_output=True, text=True,
                          timeout=60).stdout
    assert "PydanticUndefined" not in text and "repeatable; repeatable" not in text
    text = " ".join(text.split())  # argparse wraps lines
    assert "(default: 1)" in text and "--param KEY=VALUE" in text


def test_a_long_command_says_what_it_does_before_any_model_loads(bench_options, monkeypatch, capsys):
    import bild.lab.experiment

    def loads(*a, **kw):
        raise BildError("stop here")

    monkeypatch.setattr(bild.lab.experiment, "load_pair", loads)
    options = bench_options()
    assert cli(["bench", "--small", options.small, "--large", options.large, "--prompts", options.prompts]) == 2
    first, *_ = capsys.readouterr().err.splitlines()
    assert first.startswith("bild bench: checking the inputs")
