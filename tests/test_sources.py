"""Draft sources (bild/sources.py): context lookup beside the small model, the round and pass schedule stated once
(bild/schedule.py), and the oracle over sources. Identities: whatever a source proposes, `exact` is the large model's
greedy output; sampling with lookup drafts keeps the large model's distribution; no method beats the oracle of its
own sources; the recorded rounds replay into the statistics a generation counted."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from pydantic import Field
from scipy.stats import chisquare
from test_sampling import RUNS, TEMPERATURE, binned, large_distributions

from bild import BildError, GenerationConfig, generate, generate_single, make_policy
from bild.costs import CostModel, PassCosts
from bild.lab.oracle import accepted_runs, bigram_runs, lookup_along, oracle, price, teacher_forced
from bild.schedule import Round, passes
from bild.sources import ContextLookup, DraftSource, Proposal
from policies.exact import ExactPolicy
from policies.rules import RulePolicy

from conftest import PROMPTS

CFG = GenerationConfig(max_new_tokens=24, max_draft_tokens=6)


class Scripted(DraftSource):
    """A source for tests: proposes what `make(seq, most)` returns."""

    name = "lookup"

    def __init__(self, make):
        self.make = make

    def propose(self, seq, most):
        tokens = self.make(seq, most)
        return Proposal(tokens, self.name, 1) if tokens is not None else None


def with_source(make, base=ExactPolicy, **params):
    """`base` drafting a scripted source's proposals, all of them."""
    class Policy(base):
        def draft_source(self):
            return Scripted(make)

        def lookup(self, proposal):
            return len(proposal.tokens)

    return Policy(**params)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_exact_with_any_source_is_the_large_models_greedy_output(load_pair, family):
    pair = load_pair(family, 1)
    rng = random.Random(3)
    sources = {
        "random": lambda seq, most: [rng.randrange(pair.vocab_size) for _ in range(rng.randint(0, most))],
        "always wrong": lambda seq, most: [(seq[-1] + 1) % pair.vocab_size] * most,
        "long": lambda seq, most: seq[-most:],
    }
    for prompt in PROMPTS[:5]:
        large = generate_single(pair, prompt, "large", CFG).token_ids
        truth = pair.tokenizer(prompt)["input_ids"] + large
        right = {"always right": lambda seq, most, truth=truth: truth[len(seq): len(seq) + most]}
        for name, make in {**sources, **right}.items():
            result = generate(pair, prompt, with_source(make), CFG)
            assert result.token_ids == large, (family, prompt, name)
            assert result.stats.lookup_drafts >= result.stats.lookup_accepted
            small, large_passes = passes([Round(*r) for r in result.rounds], result.prompt_tokens)
            assert small.passes == result.stats.small.passes and large_passes.passes == result.stats.large.passes
            assert small.prefill == result.stats.small.prefill and large_passes.calls == result.stats.large.calls
        for policy in (make_policy("exact", lookup_min=1), make_policy("exact", lookup_min=2), make_policy("pld"),
                       make_policy("adaptive", lookup_min=1), make_policy("exact", trust_agreement=True),
                       make_policy("adaptive", agreement=False)):
            result = generate(pair, prompt, policy, CFG)
            assert result.token_ids == large and (policy.name != "pld" or result.stats.small.calls == 0)


def test_the_small_models_logits_after_a_multi_token_catch_up_equal_a_fresh_pass(load_pair):
    pair = load_pair("llama", 1)
    runner = pair.runner("small", "off", 8)
    ids = pair.tokenizer("class Point:\n    def")["input_ids"]
    runner.start(64)
    runner.feed(ids[:3], 1)
    caught_up = runner.feed(ids[3:], 1)  # the tokens a source drafted, in one pass
    runner.start(64)
    fresh = runner.feed(ids, 1)
    assert caught_up.argmax == fresh.argmax
    assert torch.allclose(caught_up.logits, fresh.logits, atol=1e-5)


def test_the_lookup_index_rewinds_with_the_sequence():
    rng = random.Random(0)
    for _ in range(200):
        seq = [rng.randrange(5) for _ in range(rng.randint(1, 40))]
        grown = ContextLookup()
        grown.propose(seq, 4)
        cut = rng.randint(0, len(seq))
        grown.rewind(cut)
        seq = seq[:cut] + [rng.randrange(5) for _ in range(rng.randint(1, 8))]
        assert grown.propose(seq, 4) == ContextLookup().propose(seq, 4)


def test_no_context_lookup_proposes_a_token_whose_bigram_never_occurred_before():
    rng = random.Random(1)
    for _ in range(200):
        seq = [rng.randrange(6) for _ in range(rng.randint(1, 30))]
        tokens = [rng.randrange(6) for _ in range(rng.randint(1, 30))]
        bound = bigram_runs(seq, tokens)
        for n in (1, 2, 3):
            assert all(r <= b for r, b in zip(lookup_along(seq, tokens, n)[0], bound, strict=True))


class Shown(ExactPolicy):
    """`exact` shown a source's guess of a constant token it never drafts; records what each step shows."""

    guess: int = 0
    seen: list = Field(default_factory=list)

    def draft_source(self):
        return Scripted(lambda seq, most: [self.guess] * most)

    def lookup(self, proposal):
        return 0

    def fallback(self, step):
        self.seen.append((step.proposed, step.argmax, step.agrees))
        return False


def test_a_proposal_not_taken_shows_on_the_small_models_step_and_changes_nothing_else(load_pair):
    pair = load_pair("llama", 1)
    for prompt in PROMPTS[:3]:
        plain = generate(pair, prompt, make_policy("exact", lookup_min=0), CFG)
        guess = plain.token_ids[1]
        shown = Shown(lookup_min=0, guess=guess)
        result = generate(pair, prompt, shown, CFG)
        assert result.token_ids == plain.token_ids and result.rounds == plain.rounds
        assert shown.seen and all(p == guess and a == (m == guess) for p, m, a in shown.seen)
    state = make_policy("adaptive").new_state()
    generate(pair, PROMPTS[0] * 3, make_policy("adaptive", lookup_min=3, agreement=True), CFG, state=state)
    agreeing = len(state.seen) // 3  # adaptive's survival bins: no guess, agrees, disagrees
    assert sum(state.seen[agreeing:]) > 0  # its 1- and 2-token guesses keyed the bins


COSTS = CostModel(small=PassCosts(passes=[2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2, 3.4], prefill=(3.0, 0.1)),
                  large=PassCosts(passes=[10.0, 12.5, 13.0, 14.0, 18.0, 22.0, 26.0], prefill=(12.0, 0.5)),
                  overhead_per_pass=0.1, identity={"fast_path": "off"})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_no_method_beats_the_oracle_of_its_own_sources_and_the_oracle_is_monotone_in_them(load_pair, family):
    pair = load_pair(family, 1)
    for prompt in PROMPTS[:6]:
        ids = pair.tokenizer(prompt)["input_ids"]
        large = generate_single(pair, prompt, "large", CFG).token_ids
        runs = accepted_runs(teacher_forced(pair, ids, large).matches)
        looked = {"lookup": lookup_along(ids, large)[0], "bigram": bigram_runs(ids, large)}
        assert all(a <= b for a, b in zip(looked["lookup"], looked["bigram"], strict=True))
        best = {sources: oracle(runs, CFG.draft_cap(), len(ids), COSTS, looked.get(sources[-1]),
                                small="small" in sources)
                for sources in (("small",), ("lookup",), ("small", "lookup"), ("bigram",), ("small", "bigram"))}
        for seconds, rounds in best.values():  # a replay of the oracle's schedule costs what it said
            assert price(rounds, len(ids), COSTS) == pytest.approx(seconds)
        assert best["small", "lookup"][0] <= min(best["small",][0], best["lookup",][0]) + 1e-9
        # any lookup's bound is no slower than context lookup's oracle
        assert best["bigram",][0] <= best["lookup",][0] + 1e-9
        assert best["small", "bigram"][0] <= best["small", "lookup"][0] + 1e-9
        for policy, sources in ((make_policy("exact", lookup_min=0), ("small",)), (make_policy("exact", lookup_min=1),
                                                                    ("small", "lookup")),
                                (make_policy("exact", lookup_min=2), ("small", "lookup")),
                                (make_policy("adaptive"), ("small", "lookup")), (make_policy("pld"), ("lookup",))):
            result = generate(pair, prompt, policy, CFG)
            assert COSTS.seconds(result.stats) >= best[sources][0] - 1e-9, (prompt, policy)


class LookupRejection(RulePolicy):
    rollback_rule: str = "rejection"

    def fallback(self, step):
        return False


def test_sampling_with_lookup_drafts_keeps_the_large_models_distribution(load_pair):
    """A lookup draft is a one-hot proposal: kept with the large model's probability of it, else a draw from the
    rest. The first two tokens always come from a source that proposes two fixed tokens."""
    pair = load_pair("llama", 2)
    ids = pair.tokenizer("for i in")["input_ids"]
    base = GenerationConfig(max_new_tokens=2, temperature=TEMPERATURE, top_k=40, max_draft_tokens=2)
    p1, p2 = large_distributions(pair, ids, base)
    guess = [int(p1.argmax()), int(p2.argmax())]
    policy = with_source(lambda seq, most: guess[len(seq) - len(ids):][:most], base=LookupRejection)
    first, second, rejected, runs = Counter(), Counter(), 0, RUNS // 3
    for seed in range(runs):
        result = generate(pair, ids, policy, base.model_copy(update={"seed": seed}))
        first[result.token_ids[0]] += 1
        second[result.token_ids[1]] += 1
        rejected += result.stats.lookup_drafts - result.stats.lookup_accepted
    assert rejected > runs * 0.1  # the residual path is really exercised
    for counts, p in ((first, p1), (second, p2)):
        observed, expected = binned(counts, {t: float(v) for t, v in enumerate(p) if v > 0}, runs)
        assert chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize(("make", "message"), [
    (lambda seq, most: [10**9], "proposed token 1000000000, outside the vocabulary"),
    (lambda seq, most: [1] * (most + 1), "tokens where .* were asked for at most"),
    (lambda seq, most: ["a"], "must be a list of token ids"),
])
def test_a_source_that_proposes_nonsense_is_one_line_naming_it(load_pair, make, message):
    with pytest.raises(BildError, match=f"draft source Scripted .*{message}|{message}"):
        generate(load_pair("llama", 1), "def add(", with_source(make), CFG)


def test_adaptive_learns_its_rate_from_its_own_rounds_not_from_lookups(load_pair):
    """Rounds a source decided (here every round: a source that always proposes the right tokens) leave the rate
    adaptive's stopping rule weighs against untouched: their near-free tokens are no alternative where the
    context does not repeat. Before, they raised it until no small draft looked worth its pass."""
    from policies.adaptive import AdaptivePolicy

    pair = load_pair("llama", 1)
    prompt = PROMPTS[0]
    truth = pair.tokenizer(prompt)["input_ids"] + generate_single(pair, prompt, "large", CFG).token_ids
    policy = with_source(lambda seq, most: truth[len(seq): len(seq) + most] or None, base=AdaptivePolicy)
    state = policy.new_state()
    result = generate(pair, prompt, policy, CFG, state=state)
    assert result.stats.lookup_drafts > 0
    assert (state.tokens, state.cost) == (1.0, 1.0)  # the prior: no round of its own yet
