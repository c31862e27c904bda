"""docs/policies.md's custom policy: shown verbatim, installed as a package, found, run and tuned."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bild import GenerationConfig, generate, generate_single
from bild.lab.options import TuneOptions
from bild.lab.tasks import Example
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger
from policies import list_policies, make_policy, policy_class, unregister_policy

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
                          metric="agreement", sampler_seed=0, generation=cfg, out_dir=str(tmp_path), confirm=0)
    report = run_tune(options, pair, [Example(id="0", prompt="def add("), Example(id="1", prompt="for i in")],
                      WandbLogger("disabled"), setup={})
    assert report["finished_trials"] == 2
    assert {"min_ratio", "max_rank"} <= set(report["front"][0])
