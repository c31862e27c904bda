"""The cost model: pass histograms, calibration, modelled speedups in bench and tune, the adaptive policy."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

import bild.lab.align
import bild.lab.calibrate
from bild import BildError, GenerationConfig, GenerationStats, ModelPair, generate, generate_single, make_policy
from bild.costs import CostModel, PassCosts
from bild.lab.bench import run_bench
from bild.lab.calibrate import calibrate
from bild.lab.cli import main as cli
from bild.lab.methods import parse_methods
from bild.lab.options import TuneOptions
from bild.lab.tasks import Example
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger
from bild.lab.workload import Workload
from bild.stats import ModelStats

from conftest import PROMPTS, cheap_costs
from tiny import build_pair

CFG = GenerationConfig(max_new_tokens=12)


def test_passes_are_counted_by_length(load_pair):
    pair, lengths = load_pair("llama", 1), []
    handle = pair.large.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]),
                                                  with_kwargs=True)
    try:
        result = generate(pair, "def add(", make_policy("bild", {"fallback_threshold": 0.5}), CFG)
    finally:
        handle.remove()
    s = result.stats
    assert s.large.prefill == lengths[0] and s.large.passes == dict(Counter(lengths[1:]))
    assert s.large.calls == len(lengths) and s.large.positions == sum(lengths)
    single = generate_single(pair, "def add(", "large", CFG).stats
    assert single.large.passes == {1: single.new_tokens - 1} and single.small.calls == 0


def test_modelled_seconds_price_each_pass():
    costs = CostModel(small=PassCosts(passes=[1.0, 1.5], prefill=(2.0, 0.1)),
                      large=PassCosts(passes=[10.0, 11.0, 12.0], prefill=(20.0, 1.0)), overhead_per_pass=0.5)
    stats = GenerationStats(small=ModelStats(prefill=10, passes={1: 4, 2: 1}, calls=6),
                            large=ModelStats(prefill=10, passes={3: 1, 5: 2}, calls=4))
    small = 2.0 + 0.1 * 10 + 4 * 1.0 + 1 * 1.5
    large = 20.0 + 1.0 * 10 + 12.0 + 2 * (12.0 + 1.0 * 2)  # beyond the table: the last step extended
    assert costs.seconds(stats) == pytest.approx(small + large + 0.5 * 10)
    # a sum of generations prices each first pass once: two of these are twice one
    assert costs.seconds(stats + stats) == pytest.approx(2 * costs.seconds(stats))
    assert CostModel.prior(2, 12).ratio == pytest.approx(2 / 12)


def test_calibration_measures_every_length_and_round_trips(load_pair, tmp_path):
    pair = load_pair("llama", 1)
    costs = calibrate(pair, GenerationConfig(max_draft_tokens=4), repeats=3)
    assert len(costs.small.passes) == 6 and len(costs.large.passes) == 5  # a catch-up over 4 looked-up drafts
    assert all(s > 0 for s in costs.large.passes) and costs.large.prefill[0] >= 0
    assert {"small_shape", "large_shape", "hardware", "dtype", "fast_path"} <= set(costs.identity)
    costs.save(tmp_path / "c.json")
    assert CostModel.load(tmp_path / "c.json") == costs
    for bad, message in ((tmp_path / "none.json", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(BildError, match=message):
            CostModel.load(bad)
    (tmp_path / "bad.json").write_text('{"small": 1}')
    with pytest.raises(BildError, match="not a bild cost model"):
        CostModel.load(tmp_path / "bad.json")


def test_an_interrupted_command_writes_nothing_half_and_says_how_to_continue(pair_dirs, tmp_path, monkeypatch,
                                                                             capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bild.lab.calibrate, "time_prefill", interrupt)
    small, large = map(str, pair_dirs("llama", 1))
    assert cli(["calibrate", "--small", small, "--large", large, "--out", str(tmp_path / "c.json")]) == 130
    assert list(tmp_path.iterdir()) == []
    assert "nothing was written (a calibration does not resume): rerun the command" in capsys.readouterr().err
    monkeypatch.setattr(bild.lab.align, "build_data", interrupt)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "def f{i}("}}\n' for i in range(12)))
    assert cli(["align", "--small", small, "--large", large, "--prompts", str(prompts), "--out",
                str(tmp_path / "a")]) == 130
    assert "nothing finished was kept" in capsys.readouterr().err  # said, not a checkpoint that is not there


def test_bench_reports_modelled_speedups_that_do_not_depend_on_the_clock(load_pair, tmp_path):
    pair = load_pair("llama", 1)
    costs = calibrate(pair, CFG, repeats=3)
    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:3])]
    methods = parse_methods("large,large-hf,exact,bild@fallback_threshold=0.5")
    reports = [run_bench(Workload(pair, examples, CFG, costs=costs, progress=False),
                         methods)[0]["methods"] for _ in range(2)]
    rows = reports[0]
    assert rows["large"]["modelled_speedup_vs_large"] == 1.0 and rows["large-hf"]["modelled_speedup_vs_large"] is None
    for name in ("exact", "bild@fallback_threshold=0.5"):
        assert rows[name]["modelled_speedup_vs_large"] == reports[1][name]["modelled_speedup_vs_large"] > 0


def test_a_cost_model_of_another_shape_is_refused_unless_forced(pair_dirs, tmp_path, capsys):
    """Costs follow the models' shapes: another pair of one shape (an aligned small model) shares them."""
    same_shape = ModelPair.from_pretrained(*map(str, pair_dirs("llama", 2)), device="cpu")
    calibrate(same_shape, CFG, repeats=2).save(tmp_path / "same.json")
    other = ModelPair.from_pretrained(*map(str, pair_dirs("gpt2", 1)), device="cpu")
    calibrate(other, CFG, repeats=2).save(tmp_path / "other.json")
    small, large = map(str, pair_dirs("llama", 1))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add("}\n')
    args = ["bench", "--small", small, "--large", large, "--prompts", str(prompts), "--methods", "large,exact",
            "--max-new-tokens", "4", "--wandb-mode", "disabled", "--cost-model", str(tmp_path / "other.json")]
    assert cli(args) == 2
    assert "measured with another large_shape, small_shape" in capsys.readouterr().err
    assert cli([*args, "--force-cost-model"]) == 0
    assert "warning: using cost model" in capsys.readouterr().err
    assert cli([*args[:-1], str(tmp_path / "same.json")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def fixed_costs(load_pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("costs") / "costs.json"
    calibrate(load_pair("llama", 1), CFG, repeats=3).save(path)
    return str(path)


def tune_options(tmp_path, study: str, costs: str, **kw) -> TuneOptions:
    return TuneOptions(**{"policy": "bild", "trials": 6, "study": study, "storage": f"sqlite:///{tmp_path}/t.db",
                          "sampler_seed": 3, "generation": CFG, "out_dir": str(tmp_path), "metric": "agreement",
                          "cost_model": costs, "confirm": 0, **kw})


def test_modelled_studies_are_reproducible_and_resume_anywhere(load_pair, fixed_costs, tmp_path, monkeypatch):
    pair = load_pair("llama", 1)
    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:3])]
    off = WandbLogger("disabled")
    first = run_tune(tune_options(tmp_path, "a", fixed_costs), pair, examples, off, {})
    second = run_tune(tune_options(tmp_path, "b", fixed_costs), pair, examples, off, {})
    assert [(r["speedup"], r["agreement"], r["fallback_threshold"]) for r in first["front"]] == [
        (r["speedup"], r["agreement"], r["fallback_threshold"]) for r in second["front"]]

    # resumed "on another machine": nothing stored is measured again
    import socket

    import bild.lab.tune as tune

    measured = []
    real = tune.measure
    monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    monkeypatch.setattr(tune, "measure", lambda *a, **kw: measured.append(a[1]) or real(*a, **kw))
    run_tune(tune_options(tmp_path, "a", fixed_costs, trials=8), pair, examples, off, {})
    assert len(measured) == 2 and all(m[0].policy is not None for m in measured)  # the two new trials only
    study = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path}/t.db")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8


def test_the_best_trials_are_confirmed_on_the_clock(load_pair, tmp_path):
    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:3])]
    report = run_tune(tune_options(tmp_path, "c", cheap_costs(tmp_path), trials=4, confirm=2, force_cost_model=True,
                                   space={"fallback_threshold": "0:0.05"}), load_pair("llama", 1), examples,
                      WandbLogger("disabled"), {})
    confirmed = [r for r in report["front"] if r["measured_speedup"] is not None]
    assert 1 <= len(confirmed) <= 2 and all(r["measured_speedup"] > 0 for r in confirmed)


def test_adaptive_is_exact_reproducible_and_learns(load_pair, tmp_path):
    pair, policy = load_pair("llama", 1), make_policy("adaptive")
    state = policy.new_state()
    for prompt in PROMPTS[:4]:
        large = generate_single(pair, prompt, "large", CFG).token_ids
        assert generate(pair, prompt, policy, CFG, state=state).token_ids == large
    again = policy.new_state()
    runs = [[generate(pair, p, policy, CFG, state=s).stats.model_dump(exclude={
        "small": {"seconds"}, "large": {"seconds"}, "wall_seconds": True, "tokens_per_second": True})
             for p in PROMPTS[:4]] for s in (policy.new_state(), again)]
    assert runs[0] == runs[1]  # counted, not timed: a fresh state replays exactly
    assert sum(again.accepted) + sum(again.rejected) > sum(policy.new_state().accepted) + sum(
        policy.new_state().rejected)  # it learned from the verifications it saw

    # a small model that always agrees and costs a tenth of the large one: the policy learns to draft long
    twins = ModelPair.from_pretrained(*map(str, build_pair(tmp_path, "llama", 4, large_layers=1, small_layers=1)),
                                      device="cpu")
    state = policy.new_state()
    calls = [generate(twins, p, policy, GenerationConfig(max_new_tokens=30), state=state,
                      costs=CostModel.prior(1, 10)).stats.large_calls_per_token
             for p in PROMPTS * 2]
    assert calls[-1] <= 0.15 and calls[-1] <= calls[0]
