"""The research loop: complete W&B records, tune -> bench -> compare, config overrides, the README's commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from bild import GenerationConfig
from bild.lab.cli import build_parser, options_from
from bild.lab.cli import main as cli
from bild.lab.experiment import execute_tune
from bild.lab.options import GenerateOptions, TuneOptions

from conftest import cheap_costs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(pair_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "reference": "x = 1"}) + "\n"
                               for p in ["def add(", "for i in", "class Point:\n"]))
    small, large = map(str, pair_dirs("llama", 1))
    return {"root": root, "prompts": str(prompts), "small": small, "large": large}


def flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_two_studies_differing_in_one_setting_differ_in_one_config_key(setup):
    readable = {}
    for tokens in (6, 8):
        options = TuneOptions(small=setup["small"], large=setup["large"], prompts=setup["prompts"], policy="bild",
                              trials=1, study=f"wb{tokens}", storage=f"sqlite:///{setup['root']}/wb.db",
                              metric="agreement", generation=GenerationConfig(max_new_tokens=tokens), confirm=0,
                              wandb_mode="offline", wandb_per="study", wandb_dir=str(setup["root"] / f"wb{tokens}"),
                              out_dir=str(setup["root"]))
        execute_tune(options)
        (run,) = (setup["root"] / f"wb{tokens}" / "wandb").glob("offline-run-*")
        readable[tokens] = json.loads((run / "files" / "bild-run.json").read_text())
    assert readable[6]["name"] == "summary:wb6" and readable[6]["group"] == "wb6"
    a, b = flat(readable[6]["config"]), flat(readable[8]["config"])
    assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} == {"generation.max_new_tokens"}
    for key in ("small_hash", "prompts_hash", "machine.torch", "machine.bild", "git_commit", "generation.fast_path"):
        assert key in a, key


def test_a_front_is_benched_side_by_side_and_compared(setup, capsys):
    tune = ["tune", "--small", setup["small"], "--large", setup["large"], "--prompts", setup["prompts"], "--policy",
            "bild", "--trials", "3", "--study", "front", "--storage", f"sqlite:///{setup['root']}/f.db", "--metric",
            "agreement", "--max-new-tokens", "6", "--wandb-mode", "disabled", "--out-dir", str(setup["root"]),
            "--confirm", "0", "--sampler-seed", "1", "--cost-model", cheap_costs(setup["root"]), "--space",
            "fallback_threshold=0:0.05"]
    assert cli(tune) == 0
    front = json.loads((setup["root"] / "front-front.json").read_text())
    bench = ["bench", "--small", setup["small"], "--large", setup["large"], "--prompts", setup["prompts"],
             "--max-new-tokens", "6", "--wandb-mode", "disabled"]
    assert cli([*bench, "--from-front", str(setup["root"] / "front-front.json"),
                "--json", str(setup["root"] / "a.json")]) == 0
    report = json.loads((setup["root"] / "a.json").read_text())
    rows = {f"front/trial-{r['trial']}": r for r in front["front"]}
    assert set(report["methods"]) == {"large", *rows}
    for name, row in rows.items():
        params = report["methods"][name]["params"]
        assert all(params[k] == row[k] for k in params if k in row)
    # the same front, read from the study itself, with more tokens: compare names what differs
    assert cli([*bench, "--study", "front", "--storage", f"sqlite:///{setup['root']}/f.db", "--max-new-tokens", "4",
                "--json", str(setup["root"] / "b.json")]) == 0
    capsys.readouterr()
    assert cli(["compare", str(setup["root"] / "a.json"), str(setup["root"] / "b.json"), "--plot",
                str(setup["root"] / "ab.png")]) == 0
    out = capsys.readouterr().out
    assert "generation.max_new_tokens: 6 | 4" in out and "device" not in out.split("setup differences")[1]
    assert (setup["root"] / "ab.png").stat().st_size > 1000


def test_a_front_of_another_pair_is_refused(setup, pair_dirs, capsys):
    other_small, other_large = map(str, pair_dirs("llama", 2))
    front = setup["root"] / "front-front.json"
    if not front.exists():
        pytest.skip("needs the front of the previous test")
    assert cli(["bench", "--small", other_small, "--large", other_large, "--prompts", setup["prompts"],
                "--from-front", str(front), "--wandb-mode", "disabled"]) == 2
    assert "tuned on another pair" in capsys.readouterr().err


def test_stop_strings_on_the_command_line_understand_escapes():
    args = build_parser().parse_args(["generate", "--prompt", "x", "--stop", r"\n", "--stop", r"a\tb"])
    assert options_from(args, GenerateOptions).generation.stop_strings == ["\n", "a\tb"]


def test_run_takes_overrides(setup, capsys):
    config = setup["root"] / "b.yaml"
    config.write_text(f"description: overrides\ncommand: bench\nsmall: {setup['small']}\nlarge: {setup['large']}\n"
                      f"prompts: {setup['prompts']}\nmethods: large\nwandb_mode: disabled\n")
    assert cli(["run", str(config), "--set", "n=1", "--set", "generation.max_new_tokens=3", "--set",
                f"json_out={setup['root']}/o/run.json"]) == 0
    report = json.loads((setup["root"] / "o" / "run.json").read_text())
    assert report["setup"]["n"] == 1 and report["setup"]["generation"]["max_new_tokens"] == 3
    assert report["context"]["description"] == "overrides" and report["context"]["experiment"] == str(config)


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "bench.md").read_text() + (
        ROOT / "docs" / "tune.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("bild ") and "..." not in line:  # an elided line is an illustration
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_the_documented_commands_parse(args):
    parsed = build_parser().parse_args(args)
    assert parsed.command
