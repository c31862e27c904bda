"""Every experiment config in experiments/ validates, and every one that needs no network runs as shipped from a
fresh clone (on two prompts): a broken path or a renamed option fails here, not in a user's hands. Every
script or config a doc names exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bild.lab.experiment import load_experiment
from bild.lab.localpair import pair_dir

from tiny import build_chat_pair, build_pair, build_task_copies

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    options = load_experiment(path)
    assert options.command in ("bench", "tune") and options.description


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """experiments/ alone in a new folder; a cache holding a tiny stand-in for the offline local pair (so `pair:
    local` resolves without the 7-minute build, with a context long enough for pycode prompts); for the configs
    that need the hub, tiny stand-ins of their pairs and local copies of their tasks."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "experiments", root / "experiments")
    cache = root / "cache"
    small, large = build_pair(tmp_path_factory.mktemp("pair"), "llama", 3, positions=1024)
    target = pair_dir("cpu").relative_to(pair_dir("cpu").parents[1])
    for name, built in (("small", small), ("large", large)):
        shutil.copytree(built, cache / target / name)
    stand_ins = {"t5": build_pair(tmp_path_factory.mktemp("t5"), "t5", 3),
                 "chat": build_chat_pair(tmp_path_factory.mktemp("chat"))}
    return root, cache, stand_ins, build_task_copies(tmp_path_factory.mktemp("copies"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_runs_from_a_fresh_clone(fresh_clone, path):
    """As shipped when it needs no network; a config of the hub with its models and data swapped for local ones."""
    root, cache, stand_ins, copies = fresh_clone
    config = yaml.safe_load(path.read_text())
    extra = ["--set", "trials=2", "--set", "confirm=1"] if config["command"] == "tune" else []
    if config.get("pair") != "local":
        chat = "Instruct" in str(config.get("large")) or config.get("pair") == "qwen-coder"
        small, large = stand_ins["chat" if chat else "t5"]
        extra += ["--set", "pair=null", "--set", f"small={small}", "--set", f"large={large}", "--set",
                  f"data_dir={copies}"]
    run = subprocess.run([sys.executable, "-m", "bild", "run", f"experiments/{path.name}", "--set", "n=2", "--set",
                          "generation.max_new_tokens=4", "--set", "wandb_mode=disabled", *extra], cwd=root,
                         env={**os.environ, "BILD_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr


def test_every_script_and_config_a_doc_names_exists():
    docs = [ROOT / "README.md", ROOT / "experiments" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pattern = r"(?<![\w:/])(?:experiments|scripts|examples)/[\w./-]+\.(?:sh|py|yaml|jsonl)"  # not `git show REV:path`
    named = {m for doc in docs for m in re.findall(pattern, doc.read_text())}
    assert len(named) > 10
    assert [n for n in sorted(named) if not (ROOT / n).exists()] == []
