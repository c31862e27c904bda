"""Hostile and careless input, table-driven: every case is one clear line on stderr, exit code 2,
no traceback, and nothing a user already had is destroyed. Then a random property check of the
engine: no crash, never more than max_new_tokens, `exact` equal to large-only greedy."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

import bild.lab.experiment
from bild import BildError, GenerationConfig, Policy, Verdict, generate, generate_single, make_policy
from bild.costs import CostModel
from bild.lab.cli import main as cli
from bild.lab.tasks import load_jsonl

from conftest import PROMPTS, one_error


@pytest.fixture(scope="module")
def files(tmp_path_factory, pair_dirs):
    root = tmp_path_factory.mktemp("hostile")
    small, large = map(str, pair_dirs("llama", 1))
    good = root / "good.jsonl"
    good.write_text('{"prompt": "def add(", "reference": "a + b"}\n{"prompt": "for i in", "reference": "x"}\n')
    (root / "binary.jsonl").write_bytes(b'{"prompt": "a"}\n\xff\xfe\x00garbage\n')
    (root / "surrogate.jsonl").write_text('{"prompt": "x\\ud800y"}\n')
    (root / "folder.jsonl").mkdir()
    (root / "file").write_text("")
    (root / "space.yaml").write_text(f"command: tune\nsmall: {small}\nlarge: {large}\nprompts: {good}\npolicy: bild\n"
                                     f"trials: 1\nstorage: sqlite:///{root}/y.db\nwandb_mode: disabled\n"
                                     "metric: agreement\n"
                                     f"out_dir: {root}/yout\nconfirm: 0\ngeneration:\n  max_new_tokens: 3\n"
                                     "space:\n  fallback_threshold: 0.5\n  rollback_rule: exact\n")
    (root / "nan.jsonl").write_text('{"prompt": "p", "max_prob": NaN, "entropy": 1, "margin": 0.1, "pending": 0, '
                                    '"position": 0, "rejected": 0}\n')
    (root / "label.jsonl").write_text('{"prompt": "p", "max_prob": 0.5, "entropy": 1, "margin": 0.1, "pending": 0, '
                                      '"position": 0, "rejected": 2}\n')
    (root / "meta.jsonl").write_text('{"prompt": "p", "max_prob": 0.5, "entropy": 1, "margin": 0.1, "pending": 0, '
                                     '"position": 0, "rejected": 1}\n')
    (root / "meta.jsonl.meta.json").write_text("{corrupt")
    # what a user already has beside the commands' outputs: none of it may change
    shutil.copytree(small, root / "model")
    (root / "unrelated").mkdir()
    (root / "unrelated" / "notes.txt").write_text("mine")
    (root / "unrelated" / "data.csv").write_text("a,b\n1,2\n")
    (root / "notes.json").write_text('{"my": "notes"}\n')
    (root / "many.jsonl").write_text("".join(json.dumps({"prompt": f"def f{i}(", "id": str(i)}) + "\n"
                                             for i in range(12)))
    CostModel.prior(1, 3).save(root / "costs.json")
    (root / "front-mismatch.json").write_text(json.dumps({"policy": "exact", "front": [
        {"trial": 3, "speedup": 1.2, "agreement": 1.0, "fallback_threshold": 0.3, "rollback_threshold": 2.0}]}))
    report = {"setup": {"n": 6}, "methods": {"large": {"tokens_per_s": 10.0}}, "complete": True, "prompts_done": 6}
    (root / "r-a.json").write_text(json.dumps(report))
    (root / "r-setup-str.json").write_text(json.dumps({**report, "setup": "x"}))
    return {"root": root, "small": small, "large": large, "good": str(good), "many": str(root / "many.jsonl")}


def resolve(args: list[str], files: dict) -> list[str]:
    return [a.format(**files) for a in args]


PAIR = ["--small", "{small}", "--large", "{large}"]
BENCH = ["bench", *PAIR, "--wandb-mode", "disabled", "--max-new-tokens", "3", "--methods", "large,exact"]
TUNE = ["tune", *PAIR, "--prompts", "{good}", "--policy", "bild", "--wandb-mode", "disabled", "--max-new-tokens", "3",
        "--storage", "sqlite:///{root}/t.db", "--metric", "agreement", "--trials", "1"]
CASES = [
    # prompt files
    ([*BENCH, "--prompts", "{root}/binary.jsonl"], "not UTF-8 text"),
    ([*BENCH, "--prompts", "{root}/surrogate.jsonl"], "lone surrogate"),
    ([*BENCH, "--prompts", "{root}/folder.jsonl"], "is a folder"),
    (["generate", *PAIR, "--prompt-file", "{root}/binary.jsonl"], "not UTF-8 text"),
    (["traces", *PAIR, "--prompts", "{root}/binary.jsonl", "--out", "{root}/t.jsonl"], "not UTF-8 text"),
    (["train-policy", "--traces", "{root}/binary.jsonl", "--out", "{root}/c.json"], "not UTF-8 text"),
    # outputs
    ([*BENCH, "--prompts", "{good}", "--json", "{good}"], "is also an input"),
    ([*BENCH, "--prompts", "{good}", "--json", "{root}/file/out.json"], "cannot create the folder"),
    ([*BENCH, "--prompts", "{good}", "--json", "{root}"], "is a folder"),
    ([*BENCH, "--prompts", "{good}", "--plot", "{root}/out.xyz"], "--plot"),
    (["traces", *PAIR, "--prompts", "{good}", "--out", "{good}"], "is also an input"),
    ([*TUNE, "--out-dir", "{root}/file"], "is a file"),
    ([*TUNE, "--study", "../../x/y"], "study name"),
    # generation settings
    ([*BENCH, "--prompts", "{good}", "--seed", str(2**70)], "--seed"),
    ([*BENCH, "--prompts", "{good}", "--stop", ""], "empty stop string"),
    ([*BENCH, "--prompts", "{good}", "--top-p", "0.5"], "only apply when sampling"),
    ([*BENCH, "--prompts", "{good}", "--device", "mps"], "not available"),
    ([*BENCH, "--prompts", "{good}", "--offset", "9"], "beyond the 2 prompts"),
    # the search space
    ([*TUNE, "--space", "fallback_threshold=nan:nan"], "is not LOW:HIGH"),
    ([*TUNE, "--space", "fallback_threshold=0:3"], "above the parameter's bound"),
    ([*TUNE, "--space", "rollback_rule=nll|greedy"], "is not LOW:HIGH"),
    ([*TUNE, "--space", "fallbak_threshold=0:1"], "did you mean 'fallback_threshold'"),
    # traces and classifiers
    (["train-policy", "--traces", "{root}/nan.jsonl", "--out", "{root}/c.json"], "not a trace row"),
    (["train-policy", "--traces", "{root}/label.jsonl", "--out", "{root}/c.json"], "not a trace row"),
    (["train-policy", "--traces", "{root}/meta.jsonl", "--out", "{root}/c.json"], "is corrupt"),
    # small things
    (["demo", "--n", "0"], "--n: Input should be greater than or equal to 1"),
    (["run", "{root}/space.yaml", "--set", "trails=2"], "did you mean 'trials'"),
    (["run", "{root}"], "is a folder: give a YAML file"),
    # nothing a command did not write is deleted or overwritten
    (["align", "--small", "{root}/model", "--large", "{large}", "--prompts", "{many}", "--out", "{root}/model",
      "--overwrite"], "is also an input"),
    (["align", *PAIR, "--prompts", "{many}", "--out", "{root}/unrelated", "--overwrite"],
     "holds 2 entries bild did not write (data.csv, notes.txt)"),
    (["align", *PAIR, "--prompts", "{many}", "--out", "{root}/unrelated"], "entries bild did not write"),
    (["calibrate", "--small", "{root}/model", "--large", "{large}", "--out", "{root}/model/config.json"],
     "inside the input"),
    ([*BENCH, "--prompts", "{good}", "--cost-model", "{root}/costs.json", "--json", "{root}/costs.json"],
     "is also an input"),
    ([*BENCH, "--prompts", "{good}", "--json", "{root}/notes.json", "--overwrite"], "exists and is not a bench report"),
    ([*BENCH, "--prompts", "{good}", "--plot", "{root}/notes.png", "--json", "{root}/notes.json"],
     "exists and is not a bench report"),
    (["traces", *PAIR, "--prompts", "{good}", "--out", "{root}/notes.json"], "exists and is not a traces file"),
    (["train-policy", "--traces", "{root}/meta.jsonl", "--out", "{root}/notes.json"],
     "not a learned-policy classifier"),
    (["compare", "{root}/r-a.json", "{root}/r-a.json", "--plot", "{root}/r-a.json"], "--plot"),
    # crashes once
    (["align", *PAIR, "--prompts", "{many}", "--out", "/sys/bild-out"], "is not writable"),
    (["compare", "{root}/r-a.json", "{root}/r-setup-str.json"], "field 'setup'"),
    # silently wrong once
    (["bench", *PAIR, "--prompts", "{good}", "--wandb-mode", "disabled", "--from-front", "{root}/front-mismatch.json"],
     "which policy 'exact' does not take: the front's policy and its rows disagree"),
    # unclear once
    (["align", *PAIR, "--prompts", "{many}", "--out", "{root}/new", "--resume", "--overwrite"], "give one of them"),
    (["align", *PAIR, "--prompts", "{many}", "--out", "{root}/new", "--minutes", "0"],
     "--minutes: Input should be greater than 0"),
    (["align", *PAIR, "--prompts", "{good}", "--out", "{root}/new"], "2 prompts are left for the calibration set"),
    ([*BENCH, "--prompts", "{good}", "--cost-model", "{root}/notes.json"], "is not a bild cost model"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[f"{i}-{m}" for i, (_, m) in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_2(files, args, message, capsys):
    before = {p: p.read_bytes() for p in files["root"].rglob("*") if p.is_file()}
    assert cli(resolve(args, files)) == 2
    assert message in one_error(capsys.readouterr().err)
    for path, data in before.items():  # nothing that was there is changed
        assert path.read_bytes() == data, path


@pytest.mark.parametrize("args", [
    [*BENCH, "--prompts", "{good}", "--cost-model", "{root}/notes.json"],
    [*BENCH, "--prompts", "{good}", "--from-front", "{root}/missing-front.json"],
    [*BENCH, "--prompts", "{root}/binary.jsonl"],
    [*BENCH, "--prompts", "{good}", "--json", "{good}"],
    [*TUNE, "--cost-model", "{root}/costs.json/x"],
    ["align", *PAIR, "--prompts", "{good}", "--out", "{root}/fresh"],
    ["align", *PAIR, "--prompts", "{many}", "--out", "{root}/model"],
    ["traces", *PAIR, "--prompts", "{good}", "--out", "{good}"],
    ["calibrate", *PAIR, "--out", "{root}/unrelated"],
])
def test_bad_inputs_are_refused_before_any_model_loads(files, args, monkeypatch, capsys):
    def loads(*a, **kw):
        raise AssertionError("the pair loader was called")

    monkeypatch.setattr(bild.lab.experiment, "load_pair", loads)
    assert cli(resolve(args, files)) == 2
    one_error(capsys.readouterr().err)
    assert not (files["root"] / "fresh").exists()  # a refused align leaves no folder behind


def test_compare_reads_defensively(files, capsys):
    root = files["root"]
    report = json.loads((root / "r-a.json").read_text())
    (root / "r-no-tps.json").write_text(json.dumps({**report, "methods": {"exact": {"chrf": 20.0}}}))
    (root / "r-partial.json").write_text(json.dumps({**report, "complete": False, "prompts_done": 2}))
    assert cli(["compare", str(root / "r-a.json"), str(root / "r-no-tps.json"), str(root / "r-partial.json")]) == 0
    out = capsys.readouterr().out
    assert "2 of 6 (partial)" in out and "partial reports (interrupted" in out
    (row,) = [line for line in out.splitlines() if line.startswith("r-no-tps")]
    assert row.split()[2] == "-"  # no tokens_per_s: shown as missing, not a crash


def test_a_yaml_space_may_fix_a_value_with_a_number(files):
    import optuna

    assert cli(["run", str(files["root"] / "space.yaml")]) == 0
    storage = f"sqlite:///{files['root']}/y.db"
    (trial,) = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).trials
    assert trial.user_attrs["params"]["fallback_threshold"] == 0.5 and "fallback_threshold" not in trial.params


def test_api_inputs_are_checked_with_a_clear_error(load_pair):
    pair, exact = load_pair("llama", 1), make_policy("exact")
    for prompt, message in ((None, "not NoneType"), (123, "not int"), ([1.5, 2.0], "holds 1.5"),
                            ([-5, 3], "token id -5"), (["a", "b"], "list of 2 prompt"), ("x\ud800", "lone surrogate")):
        with pytest.raises(BildError, match=message):
            generate(pair, prompt, exact)
    assert generate(pair, "def add(", "exact", {"max_new_tokens": 3}).token_ids  # a name and a dict are fine
    with pytest.raises(BildError, match="invalid generation config: max_new_tokens"):
        generate(pair, "def add(", exact, {"max_new_tokens": 0})
    with pytest.raises(BildError, match="less than or equal to 1"):
        make_policy(make_policy("bild"), {"fallback_threshold": 5.0})
    with pytest.raises(BildError, match="unknown parameter 'bogus'"):
        make_policy(make_policy("bild"), {"bogus": 1})
    with pytest.raises(BildError, match="no prompts"):
        from bild.lab.bench import run_bench
        from bild.lab.methods import parse_methods
        from bild.lab.workload import Workload

        run_bench(Workload(pair, [], GenerationConfig()), parse_methods("large"))


class Returns(Policy):
    """A policy returning what a test asks it to."""

    model_config = {"arbitrary_types_allowed": True}  # noqa: RUF012  (pydantic's settings)
    falls: object = False
    keeps: object = 0

    def fallback(self, step):
        return self.falls

    def rollback(self, verification):
        return self.keeps


@pytest.mark.parametrize(("falls", "keeps", "message"), [
    (False, 1.5, r"rollback returned 1.5 \(float\)"), (False, None, "rollback returned None"),
    (False, "1", r"rollback returned '1' \(str\)"), (False, torch.tensor(1), r"rollback returned tensor\(1\)"),
    (False, Verdict(0, torch.full((258,), float("nan"))), "not a distribution"),
    (False, Verdict(0, torch.ones(5)), "not a distribution"),
    (torch.tensor([True, False]), 0, "Returns.fallback returned tensor"), (None, 0, "fallback returned None"),
])
def test_what_a_policy_returns_is_checked_at_the_seam(load_pair, falls, keeps, message):
    with pytest.raises(BildError, match=message):
        generate(load_pair("llama", 1), "def add(", Returns(falls=falls, keeps=keeps),
                 GenerationConfig(max_new_tokens=6))


def test_the_api_loader_refuses_binary_files(files):
    with pytest.raises(BildError, match="not UTF-8 text"):
        load_jsonl(files["root"] / "binary.jsonl")


def test_random_generations_never_crash_and_exact_is_large_greedy(load_pair):
    """200 random generations: prompts, lengths, caps, policies, parameters, sampling."""
    rng = random.Random(1)
    names = ["bild", "exact", "entropy", "topk-margin", "adaptive"]
    for i in range(200):
        pair = load_pair(rng.choice(["llama", "qwen2", "gpt2", "t5"]), 1)
        prompt = rng.choice(PROMPTS) + "".join(rng.choice("xyz ({:=\n") for _ in range(rng.randint(0, 5)))
        config = GenerationConfig(max_new_tokens=rng.randint(1, 24), max_draft_tokens=rng.choice([1, 2, 5, 10, None]),
                                  temperature=rng.choice([0.0, 0.0, 0.7]), seed=rng.randrange(2**31),
                                  stop_strings=rng.choice([[], [")"], ["\n"]]))
        name = rng.choice(names)
        params = {"rollback_rule": rng.choice(["nll", "exact", "rejection"])} if name != "exact" else {}
        if name in ("bild", "exact"):
            params["fallback_threshold" if name == "bild" else "verify_below"] = rng.random()
        result = generate(pair, prompt, make_policy(name, params), config)
        assert len(result.token_ids) <= config.max_new_tokens, (i, name, params, config)
        if name == "exact" and config.temperature == 0 and not config.stop_strings:
            assert result.token_ids == generate_single(pair, prompt, "large", config).token_ids, (i, params, config)
    assert json.dumps(result.model_dump())  # results serialise


class BrokenHooks(Policy):
    """A policy whose `where` hook breaks: raises, or (stop_drafting) returns a number."""

    where: str = "after_draft"

    def fallback(self, step):
        return False

    def stop_drafting(self, step):
        return 1 if self.where == "stop_drafting" else False

    def after_draft(self, state, step, fell_back):
        if self.where == "after_draft":
            raise ZeroDivisionError("division by zero")

    def before_generation(self, state, prompt_ids):
        if self.where == "before_generation":
            raise KeyError("x")

    def after_verification(self, state, verification, outcome):
        if self.where == "after_verification":
            raise ValueError("bad")

    def rollback(self, verification):
        return verification.first_mismatch


@pytest.mark.parametrize(("where", "message"), [
    ("after_draft", "policy BrokenHooks.after_draft raised ZeroDivisionError: division by zero"),
    ("before_generation", "policy BrokenHooks.before_generation raised KeyError"),
    ("after_verification", "policy BrokenHooks.after_verification raised ValueError: bad"),
    ("stop_drafting", r"policy BrokenHooks.stop_drafting returned 1 \(int\); it must return True or False"),
])
def test_a_hook_that_breaks_names_the_policy_and_the_hook(load_pair, where, message):
    with pytest.raises(BildError, match=message):
        generate(load_pair("llama", 1), "def add(", BrokenHooks(where=where), GenerationConfig(max_new_tokens=6))


def test_compare_reads_reports_of_the_previous_schema(files, capsys):
    """bild-bench/1 reports held flat statistics and no τ: compare shows them beside today's."""
    root = files["root"]
    old = {"setup": {"n": 2, "methods": ["large", "exact"]}, "complete": True, "prompts_done": 2,
           "methods": {"large": {"tokens_per_s": 50.0, "speedup_vs_large": 1.0, "stats": {
               "large_calls": 64, "large_calls_per_token": 1.0, "mean_accepted_draft_length": 0.0}},
               "exact": {"tokens_per_s": 60.0, "speedup_vs_large": 1.2, "exact_match_with_large": 1.0, "stats": {
                   "small_calls": 80, "large_calls": 26, "large_calls_per_token": 0.41,
                   "mean_accepted_draft_length": 1.46}}}}
    (root / "v1.json").write_text(json.dumps(old))
    new = {**old, "schema": "bild-bench/2", "methods": {"exact": {"tokens_per_s": 61.0, "stats": {
        "small": {"calls": 80}, "large": {"calls": 26}, "large_calls_per_token": 0.41, "mean_accepted_tokens": 2.46}}}}
    (root / "v2.json").write_text(json.dumps(new))
    assert cli(["compare", str(root / "v1.json"), str(root / "v2.json")]) == 0
    rows = {tuple(line.split()[:2]): line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("v")}
    assert "2.46" in rows[("v1", "exact")] and "2.46" in rows[("v2", "exact")]  # τ, computed from the old field
