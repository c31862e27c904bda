"""One door from an example to prompt ids (bild/lab/chat.py's `conversations`): every command that reads prompts
renders them the same way. On a tiny pair with a chat template and two-turn examples, tune's oracle is bench's,
traces see the templated ids, and a chat mode the tokenizer cannot honour is one line from every command."""

from __future__ import annotations

import json

import pytest

from bild import BildError, GenerationConfig, ModelPair, generate, make_policy
from bild.costs import CostModel
from bild.lab.bench import run_bench
from bild.lab.chat import conversations
from bild.lab.cli import main as cli
from bild.lab.methods import parse_methods
from bild.lab.options import TuneOptions
from bild.lab.tasks import load_examples
from bild.lab.traces import collect_traces
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger
from bild.lab.workload import Workload

from conftest import cheap_costs, one_error
from tiny import build_chat_pair

CFG = GenerationConfig(max_new_tokens=10, max_draft_tokens=4)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("door")
    small, large = build_chat_pair(root)
    questions = root / "question.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "turns": [f"Question {i}: add {i} and {i + 1}?",
                                                                        "And then?"]}) + "\n" for i in range(3)))
    return {"pair": ModelPair.from_pretrained(str(small), str(large), device="cpu"), "questions": str(questions),
            "examples": load_examples(prompts=str(questions)), "root": root}


def test_tunes_oracle_is_benchs_over_the_policys_sources_on_templated_two_turn_prompts(chat, tmp_path):
    costs = CostModel.load(cheap_costs(tmp_path))
    report, _ = run_bench(Workload(chat["pair"], chat["examples"], CFG, costs=costs, chat="on", progress=False),
                          parse_methods("large,exact@lookup_min=0"))
    options = TuneOptions(policy="bild", trials=2, study="door", storage=f"sqlite:///{tmp_path}/t.db", sampler_seed=0,
                          generation=CFG, out_dir=str(tmp_path), confirm=0, cost_model=cheap_costs(tmp_path),
                          chat="on", metric="agreement")
    tuned = run_tune(options, chat["pair"], chat["examples"], WandbLogger("disabled"), {"pair": "chat"})
    assert tuned["oracle_modelled_speedup"] == pytest.approx(report["oracle"]["modelled_speedup"])
    assert tuned["setup"]["chat"] == "on" and tuned["oracle_sources"] == ["small"]
    # a policy drafting from context too is scored against the oracle of both its sources, as bench's own
    looks = run_tune(options.model_copy(update={"policy": "exact", "study": "door-exact"}), chat["pair"],
                     chat["examples"], WandbLogger("disabled"), {"pair": "chat"})
    assert looks["oracle_sources"] == ["small", "lookup"]
    assert looks["oracle_modelled_speedup"] == pytest.approx(report["oracle"]["sources"]["small+lookup"])


def test_traces_see_the_templated_prompt_and_the_small_models_own_drafts(chat, tmp_path):
    pair, examples, config = chat["pair"], chat["examples"], CFG.model_copy(update={"max_new_tokens": 48})
    counted = {}
    for mode in ("on", "off"):
        meta = collect_traces(Workload(pair, examples, config, chat=mode, progress=False), tmp_path / f"{mode}.jsonl")
        counted[mode] = meta["rows"]
    assert (tmp_path / "on.jsonl").read_text() != (tmp_path / "off.jsonl").read_text()
    # every traced draft is the small model's: as many as the chain (no context lookup) has judged on each first turn
    talks = conversations(pair, examples, "on", None, config.max_new_tokens)
    chain = make_policy("exact", {"verify_below": 0.0, "lookup_min": 0})
    drafted = sum(sum(generate(pair, t.first, chain, config).stats.judged_by_position) for t in talks)
    assert counted["on"] == drafted


def test_a_chat_mode_the_tokenizer_cannot_honour_is_one_line_from_every_command(pair_dirs, tmp_path, capsys):
    small, large = map(str, pair_dirs("llama", 1))  # a tokenizer without a chat template
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def add_{i}("}) + "\n" for i in range(12)))  # align wants 10
    common = ["--small", small, "--large", large, "--prompts", str(prompts), "--chat", "on", "--max-new-tokens", "4"]
    commands = {
        "bench": ["bench", *common, "--wandb-mode", "disabled", "--methods", "large"],
        "tune": ["tune", *common, "--policy", "bild", "--trials", "1", "--metric", "agreement", "--storage", f"sqlite:///{tmp_path}/t.db",
                 "--out-dir", str(tmp_path), "--wandb-mode", "disabled", "--cost-model", cheap_costs(tmp_path)],
        "traces": ["traces", *common, "--out", str(tmp_path / "t.jsonl")],
        "align": ["align", *common, "--out", str(tmp_path / "aligned")],
    }
    for name, args in commands.items():
        assert cli(args) == 2, name
        assert "has no chat template: use --chat off" in one_error(capsys.readouterr().err), name
    assert not (tmp_path / "t.jsonl").exists() and not (tmp_path / "t.db").exists()


def test_a_later_turn_too_long_for_the_context_is_refused_before_anything_runs(chat, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"question_id": "q7", "turns": ["Hi?", "word " * 3000]}) + "\n")
    with pytest.raises(BildError, match=r"example 'q7', turn 2 of 2 \(before any answer is added\): .*context"):
        conversations(chat["pair"], load_examples(prompts=str(path)), "on", None, 8)
