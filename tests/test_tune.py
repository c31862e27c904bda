"""`bild tune` on a tiny pair with SQLite: the space, the search, the front, resuming, bad input."""

from __future__ import annotations

import json
import textwrap

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from pydantic import Field

from bild import BildError, GenerationConfig, Policy
from bild.lab.options import TuneOptions
from bild.lab.space import SearchSpace
from bild.lab.tasks import Example
from bild.lab.tune import run_tune
from bild.lab.wandb_log import WandbLogger
from policies import policy_class, register_policy, unregister_policy

from conftest import PROMPTS, AlwaysFallback, cheap_costs

CFG = GenerationConfig(max_new_tokens=10)
OFF = WandbLogger("disabled")
SETUP = {"pair": "tiny"}


@pytest.fixture(scope="module")
def examples():
    return [Example(id=str(i), prompt=p, reference="for i in range(10): print(i)") for i, p in enumerate(PROMPTS[:4])]


def options(tmp_path, **kw) -> TuneOptions:
    return TuneOptions(**{"policy": "bild", "trials": 4, "study": "s", "storage": f"sqlite:///{tmp_path}/t.db",
                          "sampler_seed": 0, "generation": CFG, "out_dir": str(tmp_path), "confirm": 0,
                          "cost_model": cheap_costs(tmp_path), **kw})


def test_search_space_comes_from_the_policy_bounds():
    space = SearchSpace(policy_class("bild"))
    assert space.distributions == {"fallback_threshold": FloatDistribution(0.0, 1.0),
                                   "rollback_threshold": FloatDistribution(0.0, 30.0),
                                   "rollback_rule": CategoricalDistribution(["nll", "exact"])}  # greedy: no rejection
    assert SearchSpace(policy_class("bild"), greedy=False).distributions["rollback_rule"] == CategoricalDistribution(
        ["nll", "exact", "rejection"])
    space = SearchSpace(policy_class("bild"), {"rollback_threshold": "1:4", "fallback_threshold": "0.3",
                                               "rollback_rule": "nll"})
    assert space.distributions == {"rollback_threshold": FloatDistribution(1.0, 4.0)}
    assert space.fixed == {"fallback_threshold": 0.3, "rollback_rule": "nll"}
    space = SearchSpace(policy_class("bild"), {"rollback_rule": "nll|exact"})
    assert space.distributions["rollback_rule"] == CategoricalDistribution(["nll", "exact"])
    with pytest.raises(BildError, match="is not LOW:HIGH"):
        SearchSpace(policy_class("bild"), {"rollback_threshold": "4:1"})
    with pytest.raises(BildError, match="did you mean 'fallback_threshold'"):
        SearchSpace(policy_class("bild"), {"fallbak_threshold": "0:1"})


def test_open_bounds_are_excluded_from_the_space():
    class Open(Policy):
        rate: float = Field(0.5, gt=0.0, lt=1.0)
        count: int = Field(3, gt=0, lt=8)

        def fallback(self, step):
            return False

        def rollback(self, verification):
            return verification.n

    space = SearchSpace(Open).distributions
    assert space["rate"].low > 0.0 and space["rate"].high < 1.0
    assert (space["count"].low, space["count"].high) == (1, 7)
    with pytest.raises(BildError, match="below the parameter's bound"):
        SearchSpace(Open, {"rate": "0:0.5"})


def test_pareto_search_writes_its_front_and_resumes(load_pair, examples, tmp_path):
    pair = load_pair("llama", 1)
    drafting = {"fallback_threshold": "0:0.05"}  # this tiny small model is unsure: above 0.05 it falls back
    report = run_tune(options(tmp_path, space=drafting), pair, examples, OFF, SETUP)
    assert report["finished_trials"] == 4 and report["front"]
    assert report["cost_model"]["source"].startswith("file ")  # options.cost_model is honoured through the API
    assert all({"speedup", "chrf", "fallback_threshold"} <= set(r) for r in report["front"])
    assert json.loads((tmp_path / "s-front.json").read_text())["study"] == "s"
    assert (tmp_path / "s-front.png").stat().st_size > 1000

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/t.db")
    assert study.metric_names == ["speedup", "chrf"]
    stored = {k: v for k, v in study.user_attrs.items() if k in ("baseline", "cost_model")}
    assert set(stored) == {"baseline", "cost_model"}  # measured once, stored with the study
    trial = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert {"params", "speedup", "measured_speedup", "quality", "samples", "stats"} <= set(trial.user_attrs)
    assert {"fallback_rate", "large_calls_per_token", "acceptance_rate"} <= set(trial.user_attrs["stats"])

    # the same command with a larger total resumes: 2 more trials, nothing stored is measured again
    again = run_tune(options(tmp_path, trials=6, space=drafting), pair, examples, OFF, SETUP)
    assert again["finished_trials"] == 6
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/t.db")
    assert {k: study.user_attrs[k] for k in stored} == stored
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6
    # and a finished study runs nothing more
    assert run_tune(options(tmp_path, trials=6, space=drafting), pair, examples, OFF, SETUP)["finished_trials"] == 6


def test_single_objective_with_constraint_and_pruning(load_pair, examples, tmp_path):
    report = run_tune(options(tmp_path, objectives=["speedup"], max_quality_drop=0.05, metric="agreement", trials=8,
                              study="single", objective="measured"), load_pair("llama", 1), examples, OFF, SETUP)
    assert report["finished_trials"] == 8
    study = optuna.load_study(study_name="single", storage=f"sqlite:///{tmp_path}/t.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if t.user_attrs["quality_drop"] <= 0.05]
    assert len(report["front"] + report["dominated"]) == (1 if feasible else 0)
    for row in report["front"] + report["dominated"]:  # the fastest feasible trial
        assert row["quality_drop"] <= 0.05
        assert row["speedup"] == max(t.user_attrs["speedup"] for t in feasible)
    for t in complete:  # the constraint is known to the sampler
        assert t.system_attrs["constraints:quality_drop"] == pytest.approx(t.user_attrs["quality_drop"] - 0.05)


def test_bad_input(load_pair, examples, tmp_path):
    pair = load_pair("llama", 1)
    with pytest.raises(BildError, match="cannot open the study storage"):
        run_tune(options(tmp_path, storage="postgresql+psycopg://nobody@127.0.0.1:1/none"), pair, examples, OFF, SETUP)
    with pytest.raises(BildError, match="use --objectives speedup"):
        run_tune(options(tmp_path, max_quality_drop=1.0), pair, examples, OFF, SETUP)
    with pytest.raises(BildError, match="needs --max-quality-drop"):
        run_tune(options(tmp_path, objectives=["speedup"]), pair, examples, OFF, SETUP)
    with pytest.raises(BildError, match="needs a reference for every prompt"):
        run_tune(options(tmp_path), pair, [Example(id="x", prompt="def add(")], OFF, SETUP)
    with pytest.raises(BildError, match="twice"):
        run_tune(options(tmp_path, objectives=["speedup", "speedup"]), pair, examples, OFF, SETUP)

    register_policy("test-no-knobs")(type("NoKnobs", (AlwaysFallback,), {}))
    try:
        with pytest.raises(BildError, match="no tunable parameters"):
            run_tune(options(tmp_path, policy="test-no-knobs"), pair, examples, OFF, SETUP)
    finally:
        unregister_policy("test-no-knobs")

    run_tune(options(tmp_path, study="taken", trials=1), pair, examples, OFF, SETUP)
    with pytest.raises(BildError, match="exists with other"):
        run_tune(options(tmp_path, study="taken", objectives=["speedup"], max_quality_drop=1.0), pair, examples,
                 OFF, SETUP)
    with pytest.raises(BildError, match=r"exists with other settings \(pair differ"):
        run_tune(options(tmp_path, study="taken", trials=1), pair, examples, OFF, {"pair": "other"})


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
        report = run_tune(options(tmp_path, policy="test-cap", study="cap", trials=3), load_pair("llama", 1),
                          examples, OFF, SETUP)
        assert report["finished_trials"] == 3
        assert all(isinstance(r["keep"], int) for r in report["front"])
    finally:
        unregister_policy("test-cap")


def test_a_study_of_a_policy_that_was_edited_since_is_not_resumed(load_pair, examples, tmp_path, monkeypatch):
    """Trials of two versions of a policy must not mix in one front (a study was keyed by the policy's name)."""
    import importlib

    source = tmp_path / "my_tuned.py"
    source.write_text(textwrap.dedent("""
        from policies import register_policy
        from policies.exact import ExactPolicy


        @register_policy("test-edited")
        class Mine(ExactPolicy):
            pass
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    pair = load_pair("llama", 1)

    def tune(trials: int) -> dict:
        unregister_policy("test-edited")
        importlib.reload(importlib.import_module("my_tuned"))
        return run_tune(options(tmp_path, policy="test-edited", study="edited", trials=trials), pair, examples, OFF,
                        SETUP)

    try:
        importlib.import_module("my_tuned")
        tune(2)
        assert tune(3)["finished_trials"] == 3  # unchanged: resumed
        source.write_text(source.read_text() + "\nLIMIT = 3  # a module-level constant decides too\n")
        with pytest.raises(BildError, match=r"tuned other code of 'test-edited'.*pick another --study name"):
            tune(4)
    finally:
        unregister_policy("test-edited")


def test_a_resumed_study_never_replays_a_parameter_set(load_pair, examples, tmp_path):
    pair = load_pair("llama", 1)
    run_tune(options(tmp_path, study="replay", sampler="random"), pair, examples, OFF, SETUP)
    run_tune(options(tmp_path, study="replay", sampler="random", trials=8), pair, examples, OFF, SETUP)
    study = optuna.load_study(study_name="replay", storage=f"sqlite:///{tmp_path}/t.db")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == 8  # the same seed, resumed: no set twice


def test_workers_racing_for_a_value_all_use_the_stored_one(tmp_path):
    import threading
    import time

    from bild.lab.study import shared_value

    storage = f"sqlite:///{tmp_path}/race.db"
    optuna.create_study(study_name="race", storage=storage)
    seen: dict[int, object] = {}

    def worker(i: int) -> None:
        study = optuna.load_study(study_name="race", storage=storage)
        seen[i] = shared_value(study, storage, "baseline", lambda: time.sleep(0.2) or f"measured by {i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = optuna.load_study(study_name="race", storage=storage).user_attrs["baseline"]
    assert set(seen.values()) == {stored}


def test_conditional_parameters_are_sampled_only_where_they_apply(load_pair, examples, tmp_path):
    report = run_tune(options(tmp_path, study="cond", trials=8, sampler="random"), load_pair("llama", 1), examples,
                      OFF, SETUP)
    assert report["finished_trials"] == 8
    study = optuna.load_study(study_name="cond", storage=f"sqlite:///{tmp_path}/t.db")
    rules = set()
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        rules.add(t.params["rollback_rule"])
        assert ("rollback_threshold" in t.params) == (t.params["rollback_rule"] == "nll"), t.params
    assert rules <= {"nll", "exact"}  # greedy decoding: `rejection` would be `exact` again


def test_the_front_leaves_out_trials_the_large_model_alone_dominates(load_pair, examples, tmp_path):
    """Falling back on nearly every draft is slower than the large model alone at the same output: such a
    trial may be Pareto-optimal among trials, never against the baseline every study holds."""
    space = {"fallback_threshold": "0.0|0.99", "rollback_rule": "nll", "rollback_threshold": "30"}
    report = run_tune(options(tmp_path, study="dom", trials=2, sampler="grid", metric="agreement", space=space),
                      load_pair("llama", 1), examples, OFF, SETUP)
    assert all(r["speedup"] > 1.0 or r["quality_drop"] < 0 for r in report["front"])
    (slow,) = report["dominated"]
    assert slow["fallback_threshold"] == 0.99 and slow["speedup"] <= 1.0 and slow["dominated"] is True
    written = json.loads((tmp_path / "dom-front.json").read_text())
    assert written["dominated"] == report["dominated"] and any("lose to the large model" in n for n in written["notes"])


def test_the_front_shows_only_the_parameters_a_trial_searched(load_pair, examples, tmp_path):
    report = run_tune(options(tmp_path, study="exact-rule", trials=2, metric="agreement",
                              space={"rollback_rule": "exact"}), load_pair("llama", 1), examples, OFF, SETUP)
    rows = report["front"] + report["dominated"]
    assert rows and all("rollback_threshold" not in r and r["rollback_rule"] == "exact" for r in rows)
