"""`bild bench` on a tiny pair: every baseline, identities between them, the report, bad input."""

from __future__ import annotations

import json

import pytest

from bild import BildError, GenerationConfig
from bild.lab.bench import format_table, plot, run_bench
from bild.lab.measure import Method, parse_methods
from bild.lab.tasks import Example, load_examples, load_jsonl

from conftest import PROMPTS, NeverFallback

CFG = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def examples():
    return [Example(id=str(i), prompt=p, reference="def add(a, b): return a + b") for i, p in enumerate(PROMPTS[:4])]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_every_method_runs_and_exact_ones_agree(load_pair, examples, tmp_path, family):
    methods = parse_methods("large,large-hf,small,hf-assisted,exact,bild@fallback_threshold=0.5", {})
    out = tmp_path / "bench.json"
    report, _ = run_bench(load_pair(family), examples, methods, CFG, out=str(out), progress=False,
                          setup={"pair": family})
    rows = report["methods"]
    for exact in ("large-hf", "hf-assisted", "exact"):  # all three are the large model's greedy output
        assert rows[exact]["exact_match_with_large"] == 1.0, exact
    assert rows["large"]["speedup_vs_large"] == 1.0
    assert rows["exact"]["stats"]["large_calls_per_token"] <= 1.0
    assert rows["bild@fallback_threshold=0.5"]["params"]["fallback_threshold"] == 0.5
    assert rows["large-hf"]["stats"] is None and rows["large"]["chrf"] is not None
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] and on_disk["prompts_done"] == 4 and set(on_disk["methods"]) == set(rows)
    assert {"machine", "setup", "methods", "memory"} <= set(on_disk)
    samples = (tmp_path / "bench.samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * len(methods)
    table = format_table(report)
    assert "hf-assisted" in table and "x large-hf" in table
    plot(report, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_params_apply_to_policies_that_have_them():
    methods = parse_methods("exact,bild", {"fallback_threshold": "0.2", "rollback_threshold": "3"})
    assert methods[0].policy.fallback_threshold == 0.2
    assert methods[1].policy.params() == {"fallback_threshold": 0.2, "rollback_threshold": 3.0, "rollback_rule": "nll"}


def test_interrupted_bench_keeps_what_it_measured(load_pair, examples, tmp_path):
    generations = []

    class InterruptOnSecondPrompt(NeverFallback):
        """Counts generations (warm-up, prompt 0, prompt 1, ...); interrupts the third."""

        def fallback(self, step):
            if step.position == 0 and step.pending == 0:
                generations.append(1)
                if len(generations) == 3:
                    raise KeyboardInterrupt
            return False

    methods = [*parse_methods("large", {}), Method(name="fragile", policy=InterruptOnSecondPrompt())]
    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        run_bench(load_pair("llama"), examples, methods, CFG, out=str(out), progress=False)
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and partial["prompts_done"] == 1
    assert set(partial["methods"]) == {"large", "fragile"}
    assert len((tmp_path / "partial.samples.jsonl").read_text().splitlines()) >= 2


def test_bad_input(tmp_path, load_pair, examples):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n\n{"prompt": "b"\n')
    with pytest.raises(BildError, match=r"bad.jsonl:3: not valid JSON"):
        load_jsonl(bad)
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(BildError, match=r"bad.jsonl:2: .*'prompt'"):
        load_jsonl(bad)
    bad.write_text("\n")
    with pytest.raises(BildError, match="holds no prompts"):
        load_jsonl(bad)
    with pytest.raises(BildError, match="does not exist"):
        load_examples(prompts=str(tmp_path / "missing.jsonl"))
    with pytest.raises(BildError, match="exactly one"):
        load_examples()
    with pytest.raises(BildError, match="did you mean 'pycode'"):
        load_examples(task="pycod")
    with pytest.raises(BildError, match="--task pycode"):
        load_examples(task="xsum", n=2)
    with pytest.raises(BildError, match=r"unknown method 'larg'.*did you mean 'large'"):
        parse_methods("larg,exact", {})
    with pytest.raises(BildError, match="no listed policy has such a parameter"):
        parse_methods("large,exact", {"rollback_threshold": "2"})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BildError, match="cannot create the folder"):
        run_bench(load_pair("llama"), examples, parse_methods("large", {}), CFG,
                  out=str(blocker / "dir" / "out.json"), progress=False)


def test_pycode_task_is_deterministic_and_offline():
    first, again = load_examples(task="pycode", n=5), load_examples(task="pycode", n=5)
    assert [e.model_dump() for e in first] == [e.model_dump() for e in again]
    assert len(first) == 5 and all(e.reference and e.prompt for e in first)


def test_pycode_examples_name_the_file_their_text_comes_from(tmp_path, monkeypatch):
    """An unreadable file is skipped without shifting the names of the files after it."""
    import bild.lab.tasks as tasks

    bad, good = tmp_path / "a_bad.py", tmp_path / "b_good.py"
    bad.write_bytes(b"\xff\xfe" + b"x = 1\n" * 500)
    good.write_text("GOOD = 1\n" * 400)
    monkeypatch.setattr(tasks, "stdlib_files", lambda held_out: [bad, good])
    (example,) = tasks.pycode_examples(5)
    assert example.id.startswith("b_good.py@") and example.meta["source"] == "b_good.py"
    assert example.prompt in good.read_text()
