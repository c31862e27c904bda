"""`bild tune` on a tiny pair with SQLite: the search, the front, resuming, bad input."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from pydantic import Field

from bild import BildError, GenerationConfig, Policy
from bild.space import search_space
from bild.tasks import Example
from bild.tune import TuneSettings, run_tune
from bild.wandb_log import WandbLogger
from policies import policy_class, register_policy
from policies.registry import _REGISTRY

from conftest import PROMPTS, AlwaysFallback

CFG = GenerationConfig(max_new_tokens=10)
OFF = WandbLogger("disabled")
SETUP = {"pair": "tiny"}


@pytest.fixture(scope="module")
def examples():
    return [Example(id=str(i), prompt=p, reference="for i in range(10): print(i)") for i, p in enumerate(PROMPTS[:4])]


def settings(tmp_path, **kw) -> TuneSettings:
    return TuneSettings(**{"policy": "bild", "trials": 4, "study": "s", "storage": f"sqlite:///{tmp_path}/t.db",
                           "seed": 0, **kw})


def test_search_space_comes_from_the_policy_bounds():
    space, fixed = search_space(policy_class("bild"))
    assert space == {"fallback_threshold": FloatDistribution(0.0, 1.0),
                     "rollback_threshold": FloatDistribution(0.0, 30.0),
                     "rollback_rule": CategoricalDistribution(["nll", "exact", "rejection"])}
    assert fixed == {}
    space, fixed = search_space(policy_class("bild"), {"rollback_threshold": "1:4", "fallback_threshold": "0.3",
                                                       "rollback_rule": "nll"})
    assert space == {"rollback_threshold": FloatDistribution(1.0, 4.0)}
    assert fixed == {"fallback_threshold": 0.3, "rollback_rule": "nll"}
    space, _ = search_space(policy_class("bild"), {"rollback_rule": "nll|exact"})
    assert space["rollback_rule"] == CategoricalDistribution(["nll", "exact"])
    with pytest.raises(BildError, match="is not LOW:HIGH"):
        search_space(policy_class("bild"), {"rollback_threshold": "4:1"})
    with pytest.raises(BildError, match="has no parameter 'margin'"):
        search_space(policy_class("bild"), {"margin": "0:1"})


def test_pareto_search_writes_its_front_and_resumes(load_pair, examples, tmp_path):
    pair = load_pair("llama", 1)
    report = run_tune(settings(tmp_path), pair, examples, CFG, SETUP, OFF, out_dir=tmp_path)
    assert report["finished_trials"] == 4 and report["front"]
    assert all({"speedup", "chrf", "fallback_threshold", "rollback_threshold"} <= set(r) for r in report["front"])
    assert json.loads((tmp_path / "s-front.json").read_text())["study"] == "s"
    assert (tmp_path / "s-front.png").stat().st_size > 1000

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/t.db")
    baseline = {k: v for k, v in study.user_attrs.items() if k.startswith("baseline@")}
    assert len(baseline) == 1  # measured once, stored with the study
    trial = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert {"params", "speedup", "quality", "samples"} <= set(trial.user_attrs)

    # the same command with a larger total resumes: 2 more trials, the baseline is not remeasured
    again = run_tune(settings(tmp_path, trials=6), pair, examples, CFG, SETUP, OFF, out_dir=tmp_path)
    assert again["finished_trials"] == 6
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/t.db")
    assert {k: v for k, v in study.user_attrs.items() if k.startswith("baseline@")} == baseline
    assert len(study.trials) == 6
    # and a finished study runs nothing more
    assert run_tune(settings(tmp_path, trials=6), pair, examples, CFG, SETUP, OFF, out_dir=tmp_path)[
        "finished_trials"] == 6


def test_single_objective_with_constraint_and_pruning(load_pair, examples, tmp_path):
    s = settings(tmp_path, objectives=["speedup"], max_quality_drop=5.0, metric="agreement", trials=5,
                 study="single")
    report = run_tune(s, load_pair("llama", 1), examples, CFG, SETUP, OFF, out_dir=tmp_path)
    assert report["finished_trials"] == 5
    assert len(report["front"]) <= 1
    for row in report["front"]:
        assert row["quality_drop"] <= 5.0


def test_bad_input(load_pair, examples, tmp_path):
    pair = load_pair("llama", 1)
    with pytest.raises(BildError, match="cannot open the study storage"):
        run_tune(settings(tmp_path, storage="postgresql+psycopg://nobody@127.0.0.1:1/none"), pair, examples, CFG,
                 SETUP, OFF)
    with pytest.raises(BildError, match="use --objectives speedup"):
        run_tune(settings(tmp_path, max_quality_drop=1.0), pair, examples, CFG, SETUP, OFF)
    with pytest.raises(BildError, match="needs --max-quality-drop"):
        run_tune(settings(tmp_path, objectives=["speedup"]), pair, examples, CFG, SETUP, OFF)
    with pytest.raises(BildError, match="needs a reference for every prompt"):
        run_tune(settings(tmp_path), pair, [Example(id="x", prompt="def add(")], CFG, SETUP, OFF)
    with pytest.raises(BildError, match="twice"):
        run_tune(settings(tmp_path, objectives=["speedup", "speedup"]), pair, examples, CFG, SETUP, OFF)

    register_policy("test-no-knobs")(type("NoKnobs", (AlwaysFallback,), {}))
    try:
        with pytest.raises(BildError, match="no tunable parameters"):
            run_tune(settings(tmp_path, policy="test-no-knobs"), pair, examples, CFG, SETUP, OFF)
    finally:
        _REGISTRY.pop("test-no-knobs")

    run_tune(settings(tmp_path, study="taken", trials=1), pair, examples, CFG, SETUP, OFF, out_dir=tmp_path)
    with pytest.raises(BildError, match="exists with other"):
        run_tune(settings(tmp_path, study="taken", objectives=["speedup"], max_quality_drop=1.0), pair, examples,
                 CFG, SETUP, OFF, out_dir=tmp_path)
    with pytest.raises(BildError, match=r"exists with other settings \(pair differ"):
        run_tune(settings(tmp_path, study="taken", trials=1), pair, examples, CFG, {"pair": "other"}, OFF)


def test_a_new_policy_is_tunable_with_no_extra_code(load_pair, examples, tmp_path):
    @register_policy("test-cap")
    class KeepAtMost(Policy):
        """Keep at most `keep` drafts per verification."""

        keep: int = Field(2, ge=0, le=6)

        def fallback(self, step):
            return False

        def rollback(self, verification):
            return min(self.keep, verification.first_mismatch)

    try:
        report = run_tune(settings(tmp_path, policy="test-cap", study="cap", trials=3), load_pair("llama", 1),
                          examples, CFG, SETUP, OFF, out_dir=tmp_path)
        assert report["finished_trials"] == 3
        assert all(isinstance(r["keep"], int) for r in report["front"])
    finally:
        _REGISTRY.pop("test-cap")
