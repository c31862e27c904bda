"""Every task loads offline from a local copy built here with its hub dataset's exact schema (columns, nesting,
splits, configuration or folder), through the same `datasets.load_dataset` call a user with network makes; chat
rows and multi-turn conversations, answered turn by turn; the field's metrics by category; bad input."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets")

from bild import BildError, GenerationConfig, ModelPair  # noqa: E402
from bild.lab.bench import format_table, run_bench  # noqa: E402
from bild.lab.chat import Conversation  # noqa: E402
from bild.lab.cli import main as cli  # noqa: E402
from bild.lab.methods import parse_methods  # noqa: E402
from bild.lab.metrics import final_number  # noqa: E402
from bild.lab.tasks import TASKS, load_examples, load_jsonl  # noqa: E402
from bild.lab.workload import Workload  # noqa: E402

from conftest import one_error  # noqa: E402
from tiny import build_chat_pair, build_task_copies, dataset_card, parquet  # noqa: E402


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return build_task_copies(tmp_path_factory.mktemp("copies"))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_loads_its_local_copy_in_its_own_format(copies, task):
    examples = load_examples(task=task, n=5, data_dir=str(copies))
    assert examples and all(e.prompt and e.messages for e in examples)
    spec, first = TASKS[task], examples[0]
    if spec.make == "translation":
        assert first.prompt == "translate German to English: Das Haus ist klein."  # the T5 prefix
        assert first.reference == "The house is small." and "Das Haus ist klein." in first.messages[0]["content"]
    if task == "xsum":
        assert first.prompt.startswith("summarize: ") and first.reference == "A storm came." and first.id == "x1"
    if task == "wikitext2":
        assert len(examples) == 1 and first.prompt.split()[0] == "w0" and first.reference.split()[0] == "w48"
    if task == "gsm8k":
        assert first.answer == "7" and spec.metric == "accuracy"
    if task == "mt-bench":
        assert first.turns == ["Now make it rhyme."] and first.category == "writing" and first.id == "11"
    if task == "spec-bench":
        assert [e.category for e in examples] == ["mt_bench", "translation", "math_reasoning"]


def test_a_copy_without_a_field_and_a_missing_folder_are_one_line(copies, tmp_path):
    parquet({"translation_de": ["x"]}, tmp_path / "wmt14-de-en" / "de-en" / "test-00000-of-00001.parquet")
    dataset_card(tmp_path / "wmt14-de-en", "de-en", "test", "de-en/test-*")
    with pytest.raises(BildError, match=r"wmt14-de-en' has no field 'translation.de'"):
        load_examples(task="wmt14-de-en", data_dir=str(tmp_path))
    with pytest.raises(BildError, match="holds no copy of task 'xsum'"):
        load_examples(task="xsum", data_dir=str(tmp_path))
    with pytest.raises(BildError, match="does not exist or is not a folder"):
        load_examples(task="xsum", data_dir=str(tmp_path / "nowhere"))


def test_final_numbers_are_read_as_gsm8k_scores_them():
    assert final_number("3 + 4 = 7. The answer is 7.") == 7.0
    assert final_number("It costs $1,250.50 in all") == 1250.5 and final_number("no number") is None


# --- chat ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory):
    small, large = build_chat_pair(tmp_path_factory.mktemp("chat"))
    return ModelPair.from_pretrained(str(small), str(large), device="cpu")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "question.jsonl"
    rows = [{"question_id": i, "category": c, "turns": [f"Question {i} about {c}?", f"Follow-up {i}?"]}
            for i, c in enumerate(["writing", "translation", "qa", "writing", "translation", "qa"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_multi_turn_conversation_is_answered_turn_by_turn(chat_pair):
    (example,) = load_jsonl_rows([{"turns": ["Hi?", "And then?"]}])
    conversation = Conversation(chat_pair.tokenizer, example, "auto", system="Be brief.")
    assert conversation.chat and conversation.turns == 2
    first = chat_pair.tokenizer.decode(conversation.prompt_ids([]))
    assert first == "<system>Be brief.\n<user>Hi?\n<assistant>"
    second = chat_pair.tokenizer.decode(conversation.prompt_ids(["Hello."]))
    assert second.endswith("<user>Hi?\n<assistant>Hello.\n<user>And then?\n<assistant>")
    plain = Conversation(chat_pair.tokenizer, example, "off")
    assert chat_pair.tokenizer.decode(plain.prompt_ids(["Hello."])) == "Hi?\n\nHello.\n\nAnd then?"


def load_jsonl_rows(rows, tmp=None):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_jsonl(path)


def test_spec_bench_on_a_chat_pair_reports_by_category_and_exact_is_the_large_model_on_every_turn(chat_pair,
                                                                                                  spec_file):
    examples = load_examples(prompts=spec_file)
    methods = parse_methods("large,hf-assisted,exact,adaptive")
    report, results = run_bench(Workload(chat_pair, examples, GenerationConfig(max_new_tokens=8), progress=False),
                                methods)
    rows, categories = report["methods"], report["categories"]
    assert set(categories) == {"writing", "translation", "qa", "overall"}
    for name in ("hf-assisted", "exact", "adaptive"):
        assert rows[name]["exact_match_with_large"] == 1.0  # every turn: turn 2 asked after the method's own answer
        assert categories["overall"][name]["prompts"] == 6 and categories["qa"][name]["prompts"] == 2
    assert all(len(m.turns) == 2 for m in results["exact"])  # both turns answered and counted
    assert categories["writing"]["exact"]["mean_accepted_tokens"] >= 1.0
    assert "by category: speedup over its anchor (tau)" in format_table(report)


def test_chat_input_that_cannot_work_is_one_line(chat_pair, pair_dirs, tmp_path, capsys):
    for rows, message in (([{"text": "x"}], "needs a non-empty string 'prompt', a 'messages' list or a 'turns' list"),
                          ([{"messages": [{"role": "robot", "content": "x"}]}], "unknown role 'robot'"),
                          ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}],
                           "must end with a user turn"),
                          ([{"turns": []}], "'turns' must be a non-empty list")):
        with pytest.raises(BildError, match=message):
            load_jsonl_rows(rows)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add("}\n')
    small, large = map(str, pair_dirs("llama", 1))  # a tokenizer without a chat template
    assert cli(["bench", "--small", small, "--large", large, "--prompts", str(prompts), "--chat", "on",
                "--wandb-mode", "disabled", "--max-new-tokens", "3", "--methods", "large"]) == 2
    assert "has no chat template: use --chat off" in one_error(capsys.readouterr().err)
    assert cli(["bench", "--small", small, "--large", large, "--task", "xsum", "--data-dir", str(tmp_path / "none"),
                "--wandb-mode", "disabled"]) == 2
    assert "--data-dir" in one_error(capsys.readouterr().err)
