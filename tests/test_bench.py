"""`bild bench` on a tiny pair: every baseline, identities between them, the report, bad input."""

from __future__ import annotations

import json

import pytest

from bild import BildError, GenerationConfig
from bild.lab.bench import format_table, plot, run_bench
from bild.lab.methods import Method, parse_methods
from bild.lab.tasks import Example, load_examples, load_jsonl
from bild.lab.workload import Workload

from conftest import PROMPTS, NeverFallback

CFG = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def examples():
    return [Example(id=str(i), prompt=p, reference="def add(a, b): return a + b") for i, p in enumerate(PROMPTS[:4])]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_every_method_runs_and_exact_ones_agree(load_pair, examples, tmp_path, family):
    methods = parse_methods("large,large-hf,small,hf-assisted,exact,bild@fallback_threshold=0.5", {})
    out = tmp_path / "bench.json"
    report, _ = run_bench(Workload(load_pair(family), examples, CFG, progress=False), methods, out=str(out),
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
    plot(report, str(tmp_path / "plot.png"), "tiny")
    assert (tmp_path / "plot.png").stat().st_size > 1000


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "t5", "bart"])
def test_transformers_assisted_generation_is_counted_as_our_policies_are(pair_dirs, load_pair, examples, tmp_path,
                                                                         family):
    """transformers returns no counts: they are read off its passes. Every verification yields its kept drafts and
    one token of the large model's own; a draft model identical to the large one has every draft kept."""
    from bild import ModelPair
    from bild.costs import CostModel

    from conftest import cheap_costs

    costs = CostModel.load(cheap_costs(tmp_path))
    _, large = pair_dirs(family)
    twins = ModelPair.from_pretrained(str(large), str(large), device="cpu")
    # transformers' assistant feeds BART's decoder its whole sequence over a cache that already holds part of it
    # (positions shift), so there even an identical assistant drafts other tokens: only the counts are checked
    for pair, all_kept in ((twins, family != "bart"), (load_pair(family), False)):
        report, results = run_bench(Workload(pair, examples, CFG, costs=costs, progress=False),
                                    parse_methods("large,hf-assisted"))
        for m in results["hf-assisted"]:
            s = m.stats
            assert s.accepted_draft_tokens + s.large.calls == len(m.tokens) == s.new_tokens
            assert sum(s.accepted_lengths.values()) == s.large.calls and s.small.calls >= s.draft_tokens > 0
            assert not all_kept or s.accepted_draft_tokens == s.draft_tokens
        row = report["methods"]["hf-assisted"]
        assert row["anchor"] == "large" and row["exact_match_with_large"] == 1.0
        assert row["stats"]["mean_accepted_tokens"] > 1 and row["stats"]["acceptance_by_position"][0] is not None
        assert row["modelled_speedup_vs_large"] > 0 and row["fast_paths"] == {"small": "transformers",
                                                                             "large": "transformers"}
    assert report["methods"]["hf-assisted"]["stats"]["acceptance_rate"] < 1  # the tiny pair disagrees sometimes


def test_each_method_is_anchored_on_the_large_model_of_its_own_fast_path(load_pair, examples):
    """`exact@fast_path=static` is compared with `large@fast_path=static`, `exact` with `large`; a path
    with no `large` has no anchor, and the report says so."""
    methods = parse_methods("large,large@fast_path=static,exact,exact@fast_path=static,bild@fast_path=static,"
                            "large-hf,small", {})
    report, _ = run_bench(Workload(load_pair("llama"), examples, CFG, progress=False), methods)
    rows = report["methods"]
    assert rows["exact"]["anchor"] == "large" and rows["exact@fast_path=static"]["anchor"] == "large@fast_path=static"
    assert rows["bild@fast_path=static"]["anchor"] == "large@fast_path=static" and rows["large-hf"]["anchor"] == "large"
    assert rows["exact"]["fast_paths"] == {"small": "off", "large": "off"}
    assert rows["exact@fast_path=static"]["fast_paths"] == {"small": "static", "large": "static"}
    assert rows["large-hf"]["fast_paths"] is None and rows["small"]["fast_paths"] == {"small": "off"}
    for name in ("exact", "exact@fast_path=static", "large-hf"):
        assert rows[name]["exact_match_with_large"] == 1.0 and rows[name]["first_difference"] is None
    assert report["schema"] == "bild-bench/2" and not any("no `large`" in n for n in report["notes"])
    alone, _ = run_bench(Workload(load_pair("llama"), examples[:1], CFG, progress=False),
                         parse_methods("large,exact@fast_path=static", {}))
    assert alone["methods"]["exact@fast_path=static"]["anchor"] is None
    assert alone["methods"]["exact@fast_path=static"]["speedup_vs_large"] is None
    assert any("no `large` ran on the fast path of exact@fast_path=static" in n for n in alone["notes"])


def test_acceptance_in_the_fields_terms_agrees_with_a_hand_count(load_pair):
    """tau, the acceptance rate and acceptance by position, recounted from the verifications an observer saw."""
    from bild import Observer, generate
    from policies import make_policy

    class Rounds(Observer):
        def __init__(self):
            self.rounds = []

        def after_verification(self, verification, outcome):
            self.rounds.append((outcome.drafted, outcome.kept))

    pair, seen, total = load_pair("llama", 1), Rounds(), None
    for prompt in PROMPTS:
        stats = generate(pair, prompt, make_policy("exact", {"verify_below": 0.0}),
                         GenerationConfig(max_new_tokens=24, max_draft_tokens=5), observers=[seen]).stats
        total = stats if total is None else total + stats
    drafted, kept = sum(d for d, _ in seen.rounds), sum(k for _, k in seen.rounds)
    assert total.mean_accepted_tokens == pytest.approx((kept + len(seen.rounds)) / len(seen.rounds))
    assert total.acceptance_rate == pytest.approx(kept / drafted)
    for i in range(5):  # position i + 1: judged when the i before it survived and it was drafted
        judged = [(d, k) for d, k in seen.rounds if d > i and k >= i]
        assert total.judged_by_position[i] == len(judged)
        assert total.accepted_by_position[i] == sum(k > i for _, k in judged)
    assert sum(total.accepted_lengths.values()) == len(seen.rounds) == total.large.calls


def test_params_apply_to_policies_that_have_them():
    methods = parse_methods("exact,bild", {"verify_below": "0.3", "fallback_threshold": "0.2",
                                           "rollback_threshold": "3"})
    assert methods[0].policy.verify_below == 0.3
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
        run_bench(Workload(load_pair("llama"), examples, CFG, progress=False), methods, out=str(out))
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
    with pytest.raises(BildError, match="offline, give --data-dir"):
        load_examples(task="xsum", n=2)
    with pytest.raises(BildError, match=r"unknown method 'larg'.*did you mean 'large'"):
        parse_methods("larg,exact", {})
    with pytest.raises(BildError, match="no listed policy has such a parameter"):
        parse_methods("large,exact", {"rollback_threshold": "2"})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BildError, match="cannot create the folder"):
        run_bench(Workload(load_pair("llama"), examples, CFG, progress=False), parse_methods("large", {}),
                  out=str(blocker / "dir" / "out.json"))


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


def test_a_rerun_resumes_and_a_changed_setup_is_refused(load_pair, examples, tmp_path):
    pair, out = load_pair("llama"), tmp_path / "r.json"
    generations = []

    class Counting(NeverFallback):
        def before_generation(self, state, prompt_ids):
            generations.append(1)
            if len(generations) == 4:  # warm-up, prompts 0 and 1, then the third prompt
                raise KeyboardInterrupt

    methods = [*parse_methods("large", {}), Method(name="counting", policy=Counting())]
    with pytest.raises(KeyboardInterrupt):
        run_bench(Workload(pair, examples, CFG, progress=False), methods, out=str(out))
    assert json.loads(out.read_text())["prompts_done"] == 2
    generations.clear()
    report, _ = run_bench(Workload(pair, examples, CFG, progress=False), methods, out=str(out))
    assert report["complete"] and report["prompts_done"] == 4
    assert len(generations) == 1 + 2  # warm-up and the two prompts not measured before
    samples = [json.loads(line) for line in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    assert sorted((s["index"], s["method"]) for s in samples) == sorted(
        (i, m) for i in range(4) for m in ("large", "counting"))
    assert all(s["prompt"] == examples[s["index"]].prompt for s in samples)
    with pytest.raises(BildError, match=r"other settings \(generation differ"):
        run_bench(Workload(pair, examples, CFG.model_copy(update={"max_new_tokens": 5}), progress=False), methods,
                  out=str(out))
    generations.clear()
    report, _ = run_bench(Workload(pair, examples[:2], CFG, progress=False), methods, out=str(out), overwrite=True)
    assert report["prompts_done"] == 2 and len(generations) == 3


def test_a_rerun_after_a_policy_was_edited_measures_it_again(load_pair, examples, tmp_path, monkeypatch):
    """A resumed bench must not mix results of two versions of a policy (it once did: its name was the key)."""
    import importlib

    source = tmp_path / "my_policy.py"
    source.write_text("from conftest import NeverFallback\n\nclass Mine(NeverFallback):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pair, out = load_pair("llama"), tmp_path / "r.json"

    def methods() -> list[Method]:
        module = importlib.reload(importlib.import_module("my_policy"))
        return [*parse_methods("large", {}), Method(name="mine", policy=module.Mine())]

    run_bench(Workload(pair, examples[:2], CFG, progress=False), methods(), out=str(out))
    report, _ = run_bench(Workload(pair, examples[:2], CFG, progress=False), methods(),
                          out=str(out))  # unchanged: resumes
    assert report["complete"]
    source.write_text(source.read_text() + "\nLIMIT = 3  # a module-level constant decides too\n")
    with pytest.raises(BildError, match="other code for mine: rerun with --overwrite"):
        run_bench(Workload(pair, examples[:2], CFG, progress=False), methods(), out=str(out))


def test_a_second_writer_of_one_report_is_refused(load_pair, examples, tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "r.json.lock").write_text(str(holder.pid))
        with pytest.raises(BildError, match=f"another bench \\(pid {holder.pid}\\) is writing"):
            run_bench(Workload(load_pair("llama"), examples, CFG, progress=False), parse_methods("large", {}),
                      out=str(tmp_path / "r.json"))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over
    run_bench(Workload(load_pair("llama"), examples[:1], CFG, progress=False), parse_methods("large", {}),
              out=str(tmp_path / "r.json"))
    assert not (tmp_path / "r.json.lock").exists()


def test_the_split_without_loops_leaves_out_exactly_the_prompts_whose_large_output_ends_in_a_loop(load_pair, examples):
    from bild.lab.oracle import ends_in_loop

    assert ends_in_loop([5, 1, 2, 3] + [7, 8, 9] * 8) and ends_in_loop(list(range(30)) + [4] * 17)
    assert not ends_in_loop([7, 8, 9] * 8 + list(range(30))) and not ends_in_loop(list(range(30)) + [4] * 15)
    report, results = run_bench(Workload(load_pair("llama"), examples, GenerationConfig(max_new_tokens=32),
                                         progress=False),
                                parse_methods("large,exact,pld", {}))
    split = report["without_loops"]
    looping = [ends_in_loop(m.tokens) for m in results["large"]]
    assert (split["reference"], split["looping"], split["prompts"]) == ("large", sum(looping), len(examples))
    for name, row in split["methods"].items():
        assert row["prompts"] == len(examples) - sum(looping), name
    if split["methods"]:
        assert split["methods"]["large"]["speedup_vs_large"] == 1.0
    assert ("ends in a loop" in format_table(report)) == (0 < sum(looping) < len(examples))
