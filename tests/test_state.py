"""Policy state, hooks, history and the observer seam, through the public API."""

from __future__ import annotations

import torch
from pydantic import Field

from bild import DraftStep, GenerationConfig, Observer, Outcome, Policy, Verification, generate, make_policy

from conftest import PROMPTS

CFG = GenerationConfig(max_new_tokens=16)


class RecentEntropy(Policy):
    """A history-aware policy: fall back when the mean entropy of the last three kept drafts is high."""

    limit: float = Field(2.0, ge=0.0, le=12.0)

    def new_state(self) -> dict:
        return {"kept": [], "pending": [], "generations": 0, "verifications": 0, "seen": []}

    def before_generation(self, state: dict, prompt_ids: list[int]) -> None:
        state["generations"] += 1
        state["kept"].clear()  # per prompt
        state["pending"].clear()

    def fallback(self, step: DraftStep) -> bool:
        state = step.state
        state["seen"].append(id(state))
        recent = (state["kept"] + state["pending"])[-3:]
        if recent and sum(recent) / len(recent) > self.limit:
            return True
        state["pending"].append(step.entropy)
        return False

    def rollback(self, verification: Verification) -> int:
        return verification.first_mismatch

    def after_verification(self, state: dict, verification: Verification, outcome: Outcome) -> None:
        state["verifications"] += 1
        state["kept"] += state["pending"][: outcome.kept]  # rolled-back drafts leave the history
        state["pending"].clear()


class Events(Observer):
    def __init__(self) -> None:
        self.generations = self.drafts = self.fallbacks = self.verified = self.finished = 0
        self.kept = 0

    def before_generation(self, prompt_ids):
        self.generations += 1

    def after_draft(self, step, fallback):
        self.drafts += 1
        self.fallbacks += fallback

    def after_verification(self, verification, outcome):
        self.verified += 1
        self.kept += outcome.kept

    def after_generation(self, result):
        self.finished += 1


def test_state_is_fresh_per_call_and_kept_when_passed(load_pair):
    pair, policy = load_pair("llama", 1), RecentEntropy(limit=1.0)
    results = [generate(pair, p, policy, CFG) for p in PROMPTS[:3]]
    state = policy.new_state()
    passed = [generate(pair, p, policy, CFG, state=state) for p in PROMPTS[:3]]
    assert [r.token_ids for r in passed] == [r.token_ids for r in results]  # per-prompt parts are reset
    assert state["generations"] == 3  # the run-long part persists
    assert state["verifications"] == sum(r.stats.large.calls for r in passed) - sum(
        r.stats.large.prefill == 0 for r in passed)
    assert set(state["seen"]) == {id(state)}  # the views carry the state the engine was given


def test_observer_sees_what_the_statistics_count(load_pair):
    pair, events = load_pair("llama", 1), Events()
    results = [generate(pair, p, make_policy("bild", {"fallback_threshold": 0.4, "rollback_threshold": 2.0}), CFG,
                        observers=[events]) for p in PROMPTS[:4]]
    assert events.generations == events.finished == 4
    assert events.fallbacks == sum(r.stats.fallbacks for r in results)
    assert events.drafts == sum(r.stats.fallbacks + r.stats.draft_tokens for r in results)
    assert events.kept == sum(r.stats.accepted_draft_tokens for r in results)
    assert events.verified == sum(r.stats.large.calls for r in results)


def test_views_expose_history_and_the_hidden_state(load_pair):
    pair = load_pair("llama", 1)
    seen: list[tuple] = []

    class Probe(Policy):
        def fallback(self, step: DraftStep) -> bool:
            h = step.history
            seen.append((step.position, h.last, h.acceptance, len(h.tokens) - h.begin, step.hidden))
            return False

        def rollback(self, verification: Verification) -> int:
            return verification.first_mismatch

    result = generate(pair, "def add(", Probe(), GenerationConfig(max_new_tokens=12, max_draft_tokens=3))
    assert seen[0][1] is None and seen[0][2] is None  # nothing verified yet
    later = [s for s in seen if s[1] is not None]
    assert later and all(isinstance(s[1], Outcome) and 0 <= s[2] <= 1 for s in later)
    assert all(s[0] == s[3] for s in seen)  # position counts the new tokens so far, drafts included
    assert result.stats.accepted_draft_tokens <= result.stats.draft_tokens
    # the hidden state is the small model's final one (the output layer's input) at that position
    first = seen[0][4]
    ids = torch.tensor([pair.tokenizer("def add(")["input_ids"]])
    with torch.inference_mode():
        out = pair.small(input_ids=ids, output_hidden_states=True)
    logits = pair.small.get_output_embeddings()(first)
    torch.testing.assert_close(logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)


def test_a_bench_keeps_one_state_per_method_across_prompts(load_pair):
    from bild.lab.measure import measure
    from bild.lab.methods import Method
    from bild.lab.tasks import Example
    from bild.lab.workload import Workload

    created: list[dict] = []

    class Counted(RecentEntropy):
        def new_state(self) -> dict:
            created.append(super().new_state())
            return created[-1]

    examples = [Example(id=str(i), prompt=p) for i, p in enumerate(PROMPTS[:3])]
    work = Workload(load_pair("llama", 1), examples, CFG, repeats=2, progress=False)
    measure(work, [Method(name="counted", policy=Counted(limit=1.0))])
    assert len(created) == 1 and created[0]["generations"] == 1 + 3 * 2  # warm-up, then 3 prompts twice
