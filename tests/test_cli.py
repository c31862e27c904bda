"""The `bild` command as a user runs it: a real subprocess, JSON out, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import cheap_costs, one_error


def bild(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bild", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def dirs(pair_dirs):
    return [str(p) for p in pair_dirs("llama")]


def test_generate_json_matches_the_library(dirs, load_pair):
    from bild import GenerationConfig, generate_single

    run = bild("generate", "--small", dirs[0], "--large", dirs[1], "--prompt", "def add(", "--policy", "exact",
               "--param", "verify_below=0.3", "--max-new-tokens", "12", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["params"] == {"verify_below": 0.3, "lookup_min": 2, "trust_agreement": False}
    expected = generate_single(load_pair("llama"), "def add(", "large", GenerationConfig(max_new_tokens=12))
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert {"draft_tokens", "accepted_draft_tokens", "small", "large", "fallbacks", "rollbacks",
            "rolled_back_tokens", "wall_seconds", "mean_accepted_tokens"} <= set(out["stats"])
    assert out["stats"]["large"]["fast_path"] == "off" and {"calls", "seconds"} <= set(out["stats"]["large"])


def test_generate_prints_text_and_a_summary(dirs):
    run = bild("generate", "--small", dirs[0], "--large", dirs[1], "--prompt", "for i in",
               "--max-new-tokens", "6", "--max-draft-tokens", "none")
    assert run.returncode == 0, run.stderr
    assert "[bild] 6 tokens" in run.stderr


def test_policies_lists_parameters_with_bounds():
    run = bild("policies", "--json")
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    params = {p["name"]: p for p in rows["bild"]["params"]}
    assert params["fallback_threshold"]["low"] == 0.0 and params["fallback_threshold"]["high"] == 1.0
    listing = bild("policies").stdout
    assert "range [0.0, 30.0]" in listing and "one of nll|exact|rejection" in listing
    assert "path (str, default required)" in listing


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "bidl"], "did you mean 'bild'"),
    (["--param", "fallback_threshold=7"], "less than or equal to 1"),
    (["--param", "nonsense"], "is not KEY=VALUE"),
    (["--prompt", ""], "prompt is empty"),
])
def test_errors_are_one_line_without_traceback(dirs, args, message):
    base = {"--small": dirs[0], "--large": dirs[1], "--prompt": "x"}
    flags = [a for k, v in base.items() if k not in args for a in (k, v)]
    run = bild("generate", *flags, *args)
    assert run.returncode == 2 and message in one_error(run.stderr)


def test_missing_model_is_one_line(tmp_path):
    run = bild("generate", "--small", str(tmp_path / "a"), "--large", str(tmp_path / "b"), "--prompt", "x")
    assert run.returncode == 2 and "does not exist" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text('{"prompt": "def add(", "reference": "a + b"}\n{"prompt": "for i in", "reference": "range"}\n')
    return str(path)


def test_bench_and_tune_from_flags_and_from_a_config(dirs, prompts_file, tmp_path):
    costs = cheap_costs(tmp_path)  # calibration is not what this tests (test_costs, test_noise): no time spent on it
    run = bild("bench", "--small", dirs[0], "--large", dirs[1], "--prompts", prompts_file, "--methods",
               "large,large-hf,exact", "--max-new-tokens", "6", "--wandb-mode", "disabled",
               "--json", str(tmp_path / "b.json"), "--cost-model", costs, "--force-cost-model")
    assert run.returncode == 0, run.stderr
    assert "large-hf" in run.stdout and json.loads((tmp_path / "b.json").read_text())["complete"]

    config = tmp_path / "tune.yaml"
    config.write_text(f"command: tune\nsmall: {dirs[0]}\nlarge: {dirs[1]}\nprompts: {prompts_file}\n"
                      f"policy: exact\ntrials: 2\nstorage: sqlite:///{tmp_path}/t.db\n"
                      "generation:\n  max_new_tokens: 6\n"
                      f"wandb_mode: disabled\nout_dir: {tmp_path}\nmetric: agreement\ncost_model: {costs}\n"
                      "force_cost_model: true\nconfirm: 0\nspace:\n  verify_below: '0.1:0.9'\n")
    run = bild("run", str(config))
    assert run.returncode == 0, run.stderr
    assert "2 finished trials" in run.stdout
    front = json.loads((tmp_path / "bild-exact-p-front.json").read_text())
    assert front["options"]["space"] == {"verify_below": "0.1:0.9"}


@pytest.mark.parametrize(("args", "message"), [
    (["tune", "--policy", "bild", "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/x"],
     "cannot open the study storage"),
    (["tune", "--policy", "bild", "--objectives", "speed"], "use speedup,quality"),
    (["tune", "--policy", "bild", "--max-quality-drop", "1"], "use --objectives speedup"),
    (["bench", "--methods", "large,bogus"], "unknown method 'bogus'"),
    (["bench", "--fast-path", "graph"], "needs a CUDA GPU"),
    (["bench", "--methods", "large@fast_path=warp"], "fast_path: Input should be"),
    (["bench", "--json", "/dev/null/out.json"], "cannot create the folder"),
])
def test_bench_and_tune_errors_are_one_line(dirs, prompts_file, tmp_path, args, message):
    run = bild(*args, "--small", dirs[0], "--large", dirs[1], "--prompts", prompts_file, "--wandb-mode", "disabled",
               "--max-new-tokens", "4", *(["--storage", f"sqlite:///{tmp_path}/t.db"] if "--storage" not in args
                                          and args[0] == "tune" else []))
    assert run.returncode == 2, run.stderr
    assert message in one_error(run.stderr)


def test_run_rejects_bad_configs(tmp_path):
    assert "does not exist" in bild("run", str(tmp_path / "none.yaml")).stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: tune\npolicy: bild\ntrials: 0\n")
    run = bild("run", str(bad))
    assert run.returncode == 2 and "trials: Input should be greater than or equal to 1" in run.stderr
    bad.write_text("command: bench\nmethod: large\n")
    assert "method: Extra inputs are not permitted" in bild("run", str(bad)).stderr
