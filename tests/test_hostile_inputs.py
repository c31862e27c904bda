"""Hostile and careless input on last round's features (issue 31): chat rows, task copies, chat templates, cost
models, custom policies, flags that were silently unused. Each case is one clear line (or, where the input is
fine, the right result), never a traceback or a silently wrong run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bild.lab.experiment
from bild import BildError, GenerationConfig, Policy, generate, generate_single
from bild.costs import CostModel
from bild.lab.chat import Conversation, conversations
from bild.lab.cli import main as cli
from bild.lab.tasks import Example, load_examples, load_jsonl

from conftest import one_error
from tiny import CHAT_TEMPLATE, build_chat_pair


def rows(tmp_path: Path, *lines: dict) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}, {"role": "user", "content": "c"}]},
     "message 2 of 'messages' has no 'role'"),  # C1, S7
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
     "content that is a list"),  # U15
    ({"prompt": "x", "messages": [{"role": "user", "content": "a"}]}, "has both 'prompt' and 'messages'"),  # U16
    ({"turns": "describe a cat"}, "not a str"),
    ({"prompt": "x", "category": "overall"}, "names the total"),  # S10
])
def test_bad_rows_are_one_line_naming_the_line(tmp_path, row, message):
    with pytest.raises(BildError, match=message):
        load_jsonl(rows(tmp_path, {"prompt": "fine"}, row))


def test_extra_fields_of_a_message_are_dropped_not_refused(tmp_path):
    """C2: OpenAI-style exports carry fields such as a weight; only role and content matter."""
    (example,) = load_jsonl(rows(tmp_path, {"messages": [{"role": "user", "content": "hi", "weight": 1}]}))
    assert example.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("turns", "message"), [("describe a cat", "not a str"), ([None], "a list holding None"),
                                                 ([], "not an empty list")])
def test_a_task_copy_whose_turns_are_not_a_list_of_text_is_refused(tmp_path, turns, message):
    """S2 (a string became one turn per character) and C3."""
    (tmp_path / "spec-bench").mkdir()
    (tmp_path / "spec-bench" / "question.jsonl").write_text(json.dumps(
        {"question_id": 1, "category": "writing", "turns": turns}) + "\n")
    with pytest.raises(BildError, match=f"task 'spec-bench', row 0 .*{message}"):
        load_examples(task="spec-bench", data_dir=str(tmp_path))


def test_a_conversation_on_a_plain_tokenizer_keeps_its_system_and_history(load_pair):
    """S6/S7: without a chat template a messages row kept only its last user turn, and --system was never fed."""
    tokenizer = load_pair("llama", 1).tokenizer
    example = Example(id="1", prompt="and now?", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now?"}])
    text = tokenizer.decode(Conversation(tokenizer, example, "auto", system="you are a bot").prompt_ids([]))
    assert text == "you are a bot\n\nbe brief\n\nhello\n\nhi\n\nand now?"
    plain = Example(id="2", prompt="def add(")
    assert tokenizer.decode(Conversation(tokenizer, plain, "off", system="S").prompt_ids([])) == "S\n\ndef add("


@pytest.mark.parametrize(("template", "message"), [
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
     + CHAT_TEMPLATE, "drop --system"),  # C4: Gemma's and Mistral's do this
    ("{% for m in messages %}{{ m['content'] }", "the tokenizer's chat template failed"),  # C5
])
def test_a_chat_template_that_fails_is_one_line_naming_the_example(tmp_path_factory, template, message):
    from bild import ModelPair

    small, large = build_chat_pair(tmp_path_factory.mktemp("chat"))
    pair = ModelPair.from_pretrained(str(small), str(large), device="cpu")
    pair.tokenizer.chat_template = template
    with pytest.raises(BildError, match=f"example '7': .*{message}"):
        conversations(pair, [Example(id="7", prompt="hi", messages=[{"role": "user", "content": "hi"}])], "on",
                      "be brief", 8)


def test_an_identity_less_cost_model_needs_force(pair_dirs, tmp_path, capsys):
    """S4: a cost model with an empty identity priced any pair without a word."""
    CostModel(small=CostModel.prior(1, 3).small, large=CostModel.prior(1, 3).large).save(tmp_path / "c.json")
    small, large = map(str, pair_dirs("llama", 1))
    args = ["bench", "--small", small, "--large", large, "--prompts", rows(tmp_path, {"prompt": "def add("}),
            "--methods", "large,exact", "--max-new-tokens", "4", "--cost-model", str(tmp_path / "c.json"),
            "--wandb-mode", "disabled"]
    assert cli(args) == 2
    assert "does not say what it was measured on" in one_error(capsys.readouterr().err)
    assert cli([*args, "--force-cost-model"]) == 0
    assert "of an unknown setup" in capsys.readouterr().err


class LosesItsFile(Policy):
    """A custom policy whose state needs a file that is not there."""

    path: Path = Path("/nonexistent/table.json")

    def new_state(self):
        return json.loads(self.path.read_text())

    def fallback(self, step):
        return False

    def rollback(self, verification):
        return np.int64(verification.first_mismatch)  # U8: numpy's integers are whole numbers


class Numpy(LosesItsFile):
    def new_state(self):
        return None


def test_a_policy_whose_new_state_raises_is_named_in_bench(load_pair):
    """C6/U7: inside bench, a new_state error became a generic disk message without the policy's name."""
    from bild.lab.bench import run_bench
    from bild.lab.methods import Method
    from bild.lab.workload import Workload

    with pytest.raises(BildError, match=r"policy LosesItsFile.new_state raised FileNotFoundError"):
        run_bench(Workload(load_pair("llama", 1), [Example(id="0", prompt="def add(")],
                           GenerationConfig(max_new_tokens=4), progress=False),
                  [Method(name="large"), Method(name="mine", policy=LosesItsFile())])


def test_a_policy_with_a_path_parameter_and_numpy_integers_benches_and_reports(load_pair, tmp_path):
    """C7: a Path parameter made the report unserialisable after prompt 1; U8: rollback's np.int64 was refused."""
    from bild.lab.bench import run_bench
    from bild.lab.methods import Method
    from bild.lab.workload import Workload

    pair, config = load_pair("llama", 1), GenerationConfig(max_new_tokens=8)
    assert generate(pair, "def add(", Numpy(), config).token_ids == generate_single(pair, "def add(", "large",
                                                                                    config).token_ids
    run_bench(Workload(pair, [Example(id=str(i), prompt=p) for i, p in enumerate(["def add(", "for i in"])], config,
                       progress=False),
              [Method(name="large"), Method(name="mine", policy=Numpy())], out=str(tmp_path / "r.json"))
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["methods"]["mine"]["params"]["path"] == str(LosesItsFile().path)


def test_a_huge_draft_cap_sizes_nothing_beyond_the_generation():
    """U3: --max-draft-tokens 100000 without a cost model calibrated 100,001 pass lengths."""
    assert GenerationConfig(max_new_tokens=64, max_draft_tokens=100_000).draft_cap() == 64
    assert GenerationConfig(max_new_tokens=64, max_draft_tokens=None).draft_cap() == 64


def test_flags_that_would_be_silently_unused_or_misnamed_are_refused(tmp_path, monkeypatch):
    with pytest.raises(BildError, match="--data-dir holds copies of named tasks"):  # U17
        load_examples(prompts=rows(tmp_path, {"prompt": "x"}), data_dir=str(tmp_path))
    monkeypatch.setenv("BILD_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(BildError, match=r"^\$BILD_DATA_DIR .* or unset BILD_DATA_DIR"):  # U14
        load_examples(task="gsm8k")


def test_an_interrupt_before_anything_was_measured_says_so(pair_dirs, tmp_path, monkeypatch, capsys):
    """U13: an interrupt during the automatic calibration said "what was measured is in FILE"."""
    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(bild.lab.experiment, "prepare", interrupt)
    out = tmp_path / "r.json"
    small, large = map(str, pair_dirs("llama", 1))
    assert cli(["bench", "--small", small, "--large", large, "--prompts", rows(tmp_path, {"prompt": "x"}),
                "--wandb-mode", "disabled", "--json", str(out)]) == 130
    assert "nothing was measured yet" in capsys.readouterr().err and not out.exists()


def test_a_fingerprint_names_an_offloaded_layer_without_reading_it(load_pair):
    """C10: a layer offloaded to disk sits on the meta device; the fingerprint read it and crashed."""
    import copy

    import torch

    from bild.lab.identity import model_fingerprint

    model = copy.deepcopy(load_pair("llama", 1).large)
    before = model_fingerprint(model)
    model.model.layers[0].mlp.up_proj.to("meta")
    assert model_fingerprint(model) != before and isinstance(model_fingerprint(model), str)
    assert torch.is_tensor(next(model.parameters()))


@pytest.mark.parametrize("categories", [{"writing": [1, 2]}, {"writing": {"exact": "fast"}}, ["writing"]])
def test_compare_reads_malformed_categories_without_a_traceback(tmp_path, capsys, categories):
    """C11/C12."""
    report = {"setup": {"n": 1}, "methods": {"large": {"tokens_per_s": 1.0}}, "categories": categories}
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    assert cli(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) in (0, 2)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_one_plugin_that_fails_to_import_hides_no_other_policy(monkeypatch, caplog):
    """U5/U6: one broken entry point made `bild policies` list nothing and hid "did you mean" for --methods."""
    import bild.registry
    from bild.lab.methods import parse_methods

    class Broken:
        value = "broken_pkg:Policy"

        def load(self):
            raise ImportError("No module named 'broken_pkg'")

    real = bild.registry._entry_points
    monkeypatch.setattr(bild.registry, "_entry_points", lambda: {**real(), "broken": Broken()})
    monkeypatch.setattr(bild.registry, "_BROKEN", {})
    assert "exact" in bild.registry.list_policies() and "broken" not in bild.registry.list_policies()
    assert "failed to import" in caplog.text
    with pytest.raises(BildError, match="did you mean 'exact'"):
        parse_methods("large,exakt")


def test_a_space_with_fewer_settings_than_trials_stops(load_pair, tmp_path, capsys):
    """U1/U2: a one-point space ran forever, every further trial a duplicate."""
    from bild.lab.options import TuneOptions
    from bild.lab.tune import run_tune
    from bild.lab.wandb_log import WandbLogger

    from conftest import cheap_costs

    options = TuneOptions(policy="bild", trials=6, storage=f"sqlite:///{tmp_path}/t.db", metric="agreement",
                          cost_model=cheap_costs(tmp_path), space={
                              "fallback_threshold": "0.5", "rollback_threshold": "2", "rollback_rule": "exact|nll"},
                          generation=GenerationConfig(max_new_tokens=4), out_dir=str(tmp_path), confirm=0,
                          study="small-space", sampler="random", sampler_seed=0)
    report = run_tune(options, load_pair("llama", 1), [Example(id="0", prompt="def add(")], WandbLogger("disabled"),
                      {})
    assert report["finished_trials"] == 2  # its two settings, then it stops
    assert "distinct setting(s), all measured" in capsys.readouterr().err
