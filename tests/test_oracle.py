"""The oracle that knows which drafts the large model accepts: its pricing is the engine's own, no policy beats
it, a policy replaying its schedule reaches it exactly, a fixed draft length is priced as the engine runs it,
a method's gap splits into causes that add up, the confidence ideal sits between them, and every bench reports
it."""

from __future__ import annotations

import random

import pytest

from bild import GenerationConfig, Observer, Policy, generate, generate_single
from bild.costs import CostModel, PassCosts
from bild.lab.bench import run_bench
from bild.lab.methods import parse_methods
from bild.lab.oracle import (
    accepted_runs,
    closed_form,
    fixed_rounds,
    gap,
    ideal_rounds,
    oracle,
    price,
    teacher_forced,
)
from bild.lab.tasks import Example
from bild.lab.workload import Workload
from bild.schedule import Round
from policies import make_policy

from conftest import PROMPTS

# a verification that costs far more past two tokens: the best schedule splits long runs
COSTS = CostModel(small=PassCosts(passes=[2.0, 2.2], prefill=(3.0, 0.1)),
                  large=PassCosts(passes=[10.0, 12.5, 13.0, 14.0, 18.0, 22.0, 26.0, 30.0, 34.0, 38.0, 42.0],
                                  prefill=(12.0, 0.5)), overhead_per_pass=0.1, identity={"fast_path": "off"})
CFG = GenerationConfig(max_new_tokens=24, max_draft_tokens=10)


class Rounds(Observer):
    def __init__(self):
        self.rounds = []

    def after_verification(self, verification, outcome):
        self.rounds.append(Round(outcome.drafted, outcome.kept, outcome.ended == "fallback"))


def lossless_policies(rng: random.Random) -> list[Policy]:
    return [make_policy("exact", verify_below=rng.choice([0.0, 0.2, 0.4, 0.7]), lookup_min=0),
            make_policy("adaptive", lookup_min=0),
            make_policy("bild", fallback_threshold=rng.uniform(0, 0.9), rollback_rule="exact"),
            make_policy("entropy", entropy_threshold=rng.uniform(0.5, 4), rollback_rule="exact")]


def limit_of(pair, prompt: str, config: GenerationConfig = CFG):
    ids = pair.tokenizer(prompt)["input_ids"]
    large = generate_single(pair, prompt, "large", config)
    matches = teacher_forced(pair, ids, large.token_ids).matches
    return ids, large, accepted_runs(matches)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_schedule_is_priced_as_the_engine_runs_it_and_no_policy_beats_the_oracle(load_pair, family):
    pair, rng = load_pair(family, 1), random.Random(3)
    for prompt in PROMPTS[:5]:
        ids, large, runs = limit_of(pair, prompt)
        best, schedule = oracle(runs, CFG.draft_cap(), len(ids), COSTS)
        assert price(schedule, len(ids), COSTS) == pytest.approx(best)
        for policy in lossless_policies(rng):
            seen = Rounds()
            run = generate(pair, prompt, policy, CFG, observers=[seen])
            assert run.token_ids == large.token_ids
            assert price(seen.rounds, len(ids), COSTS) == pytest.approx(COSTS.seconds(run.stats))  # the engine's own
            assert best <= COSTS.seconds(run.stats) + 1e-9, (prompt, policy)  # never beaten
            split = gap(seen.rounds, runs, CFG.draft_cap(), CFG.draft_cap(), len(ids), COSTS, best)
            assert split["gap"] == pytest.approx(COSTS.seconds(run.stats) - best)
            assert split["gap"] == pytest.approx(sum(v for k, v in split.items() if k != "gap"))  # adds up
            assert split["rejected"] >= -1e-9 and split["schedule"] >= -1e-9


class Replay(Policy):
    """Drafts exactly the rounds it is given (in its state): fall back where a round drafts none."""

    def fallback(self, step):
        return step.state["rounds"][step.state["next"]].drafted == 0

    def stop_drafting(self, step):
        return step.pending + 1 >= step.state["rounds"][step.state["next"]].drafted

    def rollback(self, verification):
        return verification.first_mismatch

    def after_verification(self, state, verification, outcome):
        state["next"] += 1


def test_a_policy_replaying_the_oracles_schedule_reaches_it_exactly(load_pair):
    pair = load_pair("llama", 1)
    for prompt in PROMPTS:
        ids, large, runs = limit_of(pair, prompt)
        best, schedule = oracle(runs, CFG.draft_cap(), len(ids), COSTS)
        run = generate(pair, prompt, Replay(), CFG, state={"rounds": schedule, "next": 0})
        assert run.token_ids == large.token_ids and run.stats.rolled_back_tokens == 0
        assert COSTS.seconds(run.stats) == pytest.approx(best)


def test_a_fixed_draft_length_is_priced_as_exact_runs_it_at_that_cap(load_pair):
    pair = load_pair("llama", 1)
    for gamma in (1, 3, 6):
        config = CFG.model_copy(update={"max_draft_tokens": gamma})
        for prompt in PROMPTS[:4]:
            ids, _, runs = limit_of(pair, prompt, config)
            run = generate(pair, prompt, make_policy("exact", verify_below=0.0, lookup_min=0), config)
            assert COSTS.seconds(run.stats) == pytest.approx(price(fixed_rounds(runs, gamma), len(ids), COSTS))


def test_the_confidence_ideal_is_the_oracle_when_confidence_is_certain_and_never_beats_it():
    rng = random.Random(3)
    for _ in range(20):
        runs = accepted_runs([rng.random() < 0.7 for _ in range(40)])
        certain = ideal_rounds(runs, [float(r > 0) for r in runs], 10, 8, COSTS, rate=0.05)
        assert all(r.kept == r.drafted for r in certain)  # knowing the outcomes, it drafts no rejected token
        best = oracle(runs, 10, 8, COSTS)[0]
        assert price(certain, 8, COSTS) >= best - 1e-9
        unsure = ideal_rounds(runs, [rng.random() for _ in runs], 10, 8, COSTS, rate=0.05)
        assert sum(r.kept + 1 for r in unsure) >= len(runs) and price(unsure, 8, COSTS) >= best - 1e-9


def test_the_closed_form_matches_leviathan():
    found = closed_form(0.68, 0.2, 10)
    assert found["best_gamma"] == 3 and found["speedup"] == pytest.approx(1.54, abs=0.01)
    assert found["bound"] == pytest.approx(2.19, abs=0.01)


def test_every_greedy_bench_reports_its_limit(load_pair, tmp_path):
    pair = load_pair("llama", 1)
    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:4])]
    lossy = "bild@fallback_threshold=0@rollback_threshold=30"
    methods = parse_methods(f"large,large-hf,exact@lookup_min=0,exact@verify_below=0@lookup_min=0,"
                            f"adaptive@lookup_min=0,exact,{lossy}")
    report, _ = run_bench(Workload(pair, examples, CFG, costs=COSTS, progress=False), methods,
                          out=str(tmp_path / "r.json"))
    o, rows = report["oracle"], report["methods"]
    assert o["anchor"] == "large" and o["prompts"] == 4 and len(o["per_prompt_oracle_speedup"]) == 4
    lossless = [r for r in rows.values() if r["exact_match_with_large"] == 1.0]
    chain = [r for r in lossless if r.get("sources") == ["small"]]  # the small model's drafts only
    assert o["modelled_speedup"] >= max(r["modelled_speedup_vs_large"] or 0 for r in chain) - 1e-9
    assert all(r["efficiency_own"] <= 1 + 1e-9 for r in lossless if r.get("efficiency_own") is not None)
    assert rows["exact"]["sources"] == ["small", "lookup"] and o["sources"]["small+lookup"] >= o["modelled_speedup"]
    assert o["modelled_speedup"] >= o["best_fixed"]["modelled_speedup"]
    assert 0 < o["ideal"]["efficiency"] <= 1 + 1e-9
    assert o["ideal_ladder"]["confidence"] == o["ideal"] and o["ideal_ladder"]["confidence+agreement"]
    assert o["sources"]["bigram"] >= o["sources"]["lookup"] and o["sources"]["small+bigram"] >= o["sources"][
        "small+lookup"]
    assert o["ideal"]["modelled_speedup"] == pytest.approx(o["ideal"]["efficiency"] * o["modelled_speedup"])
    for name in ("exact@lookup_min=0", "exact@verify_below=0@lookup_min=0", "adaptive@lookup_min=0"):  # adds up
        r = rows[name]
        assert 0 < r["efficiency"] <= 1 + 1e-9
        assert r["efficiency"] == pytest.approx(r["modelled_speedup_vs_large"] / o["modelled_speedup"])
        assert sum(r["gap"].values()) == pytest.approx(1.0) or r["gap_seconds"]["gap"] == pytest.approx(0)
    mixed = rows["exact"]  # small + lookup: its gap to the oracle of its sources, by cause, adds up too
    assert set(mixed["gap"]) == {"overruled", "rejected", "unused", "schedule"}
    assert sum(mixed["gap_seconds"][k] for k in mixed["gap"]) == pytest.approx(mixed["gap_seconds"]["gap"])
    assert mixed["gap_seconds"]["schedule"] >= -1e-9  # what is left is a schedule the oracle could have made
    assert "efficiency" not in rows[lossy] and rows["large-hf"].get("efficiency") is None
    resumed, _ = run_bench(Workload(pair, examples, CFG, costs=COSTS, progress=False), methods,
                           out=str(tmp_path / "r.json"))
    assert resumed["oracle"] == report["oracle"]  # a resumed report recomputes it from its samples


def test_the_limit_figure_shows_its_two_panels_side_by_side(load_pair, tmp_path, monkeypatch):
    """The efficiency and calibration panels once overlapped, the second drawn outside the figure."""
    import matplotlib.figure

    from bild.lab.bench import plot

    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:2])]
    report, _ = run_bench(Workload(load_pair("llama", 1), examples, CFG, costs=COSTS, progress=False),
                          parse_methods("large,exact"))
    saved, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: saved.append([ax.get_position() for ax in fig.axes]) or save(fig, *a, **k))
    plot(report, str(tmp_path / "r.png"), "tiny")
    left, right = saved[-1]
    assert 0 <= left.x0 < left.x1 < right.x0 < right.x1 <= 1
    assert (tmp_path / "r-oracle.png").stat().st_size > 1000


def test_without_an_exact_form_or_an_anchor_the_bench_says_so(load_pair):
    pair = load_pair("llama", 1)
    examples = [Example(id="0", prompt="def add(")]
    sampled_config = CFG.model_copy(update={"temperature": 0.7, "seed": 1})
    sampled, _ = run_bench(Workload(pair, examples, sampled_config, costs=COSTS, progress=False),
                           parse_methods("large,exact"))
    assert sampled["oracle"] is None and any("the oracle is greedy only" in n for n in sampled["notes"])
    alone, _ = run_bench(Workload(pair, examples, CFG, costs=COSTS, progress=False), parse_methods("exact"))
    assert alone["oracle"] is None and any("add `large` to --methods" in n for n in alone["notes"])
