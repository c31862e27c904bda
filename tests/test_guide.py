"""docs/policies.md, as an author reads it: its example package shown verbatim, installed, found, run and tuned;
every Python block of the page run in order as one program; the policy it builds from state, history and
costs run under generate, bench and tune; every `bild` command it shows accepted by the command line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bild import GenerationConfig, generate, generate_single
from bild.lab.bench import run_bench
from bild.lab.cli import COMMANDS, build_parser, options_from
from bild.lab.methods import parse_methods
from bild.lab.options import TuneOptions
from bild.lab.tasks import Example
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger
from bild.lab.workload import Workload
from policies import list_policies, make_policy, policy_class, unregister_policy

from conftest import cheap_costs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bild-example-policy"


def test_the_guide_shows_the_example_verbatim():
    guide = (ROOT / "docs" / "policies.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert (EXAMPLE / "bild_example_policy.py").read_text() in blocks


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "pkg"
    shutil.copytree(EXAMPLE, source)  # building writes into the source tree; keep the repository clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    sys.path.insert(0, str(target))
    yield
    sys.path.remove(str(target))
    unregister_policy("top2-gap")
    sys.modules.pop("bild_example_policy", None)


def test_the_installed_package_registers_runs_and_tunes(installed, load_pair, tmp_path):
    assert "top2-gap" in list_policies()
    assert policy_class("top2-gap").__module__ == "bild_example_policy"
    pair = load_pair("llama", 1)
    cfg = GenerationConfig(max_new_tokens=12)
    strict = make_policy("top2-gap", {"min_ratio": 2.0, "max_rank": 1})  # max_rank 1: greedy speculative
    assert generate(pair, "def add(", strict, cfg).token_ids == generate_single(pair, "def add(", "large",
                                                                                 cfg).token_ids
    options = TuneOptions(policy="top2-gap", trials=2, study="guide", storage=f"sqlite:///{tmp_path}/t.db",
                          cost_model=cheap_costs(tmp_path), force_cost_model=True, space={"min_ratio": "1:1.2"},
                          metric="agreement", sampler_seed=0, generation=cfg, out_dir=str(tmp_path), confirm=0)
    report = run_tune(options, pair, [Example(id="0", prompt="def add("), Example(id="1", prompt="for i in")],
                      WandbLogger("disabled"), setup={})
    assert report["finished_trials"] == 2
    assert {"min_ratio", "max_rank"} <= set(report["front"][0])


GUIDE = (ROOT / "docs" / "policies.md").read_text()


def test_every_python_block_of_the_guide_runs_and_its_policy_generates_benches_and_tunes(pair_dirs, load_pair,
                                                                                          tmp_path):
    small, large = map(str, pair_dirs("llama", 1))
    names = ("top2-gap", "running-confidence")
    for name in names:
        unregister_policy(name)
    try:
        program = {"__name__": "__main__", "small": small, "large": large}  # as a reader's script would run it
        for block in re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S):
            exec(compile(block, "docs/policies.md", "exec", dont_inherit=True), program)
        assert policy_class("running-confidence") is program["RunningConfidence"]
        pair, cfg = load_pair("llama", 1), GenerationConfig(max_new_tokens=12)
        examples = [Example(id=str(i), prompt=p) for i, p in enumerate(["def add(", "for i in", "the quick"])]
        report, _ = run_bench(Workload(pair, examples, cfg, progress=False),
                              parse_methods("large,running-confidence,running-confidence@margin=0"))
        row = report["methods"]["running-confidence"]
        assert row["exact_match_with_large"] == 1.0 and row["stats"]["mean_accepted_tokens"] >= 1.0
        options = TuneOptions(policy="running-confidence", trials=2, study="guide-state",
                              cost_model=cheap_costs(tmp_path), force_cost_model=True, space={"margin": "0.8:1"},
                              storage=f"sqlite:///{tmp_path}/t.db", metric="agreement", sampler_seed=0, generation=cfg,
                              out_dir=str(tmp_path), confirm=0)
        tuned = run_tune(options, pair, examples[:2], WandbLogger("disabled"), setup={})
        assert tuned["finished_trials"] == 2 and "margin" in tuned["front"][0]
    finally:
        for name in names:
            unregister_policy(name)


def test_every_bild_command_the_guide_shows_is_accepted():
    import shlex

    lines = [line.split("  #")[0] for block in re.findall(r"```bash\n(.*?)```", GUIDE, flags=re.S)
             for line in block.splitlines() if line.startswith("bild ")]
    assert len(lines) >= 5
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        options_from(args, COMMANDS[args.command].options)
