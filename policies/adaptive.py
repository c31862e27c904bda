"""`adaptive`: keep drafting while another draft is worth its cost; no thresholds to tune.

Decoding runs in rounds: some drafts, then one verification. Over a run, what matters is the
rate R = tokens per unit of time. A draft the small model just proposed, with `k` drafts pending,
is worth keeping when what it adds is worth at least what it costs at that rate:

    P(the pending drafts and this one all survive) >= R * (one more small pass + what one more
                                                           token adds to the verification pass)

with times in units of a one-token large pass (the pair's cost model, `step.costs`: calibrated by
`bild calibrate`/bench/tune, else a prior from the models' depths). This is the optimal stopping
rule of a renewal-reward process (stop when the marginal gain rate falls below the average
rate), the idea behind SpecDec++'s and AdaEDL's stopping rules and transformers' online
confidence threshold.

What it learns, online, in its state (`new_state()`; one per run, so it carries across prompts):
the probability that a draft survives given the small model's max probability (Beta counts in
`BINS` bins, from the outcome of every verification: drafts up to the first rejected one), and
the rate R (tokens over modelled time of the rounds so far). Everything is counted, nothing
timed, so a run is reproducible from its seed and a fresh state.

With the `exact` rollback rule (the default) the output is the large model's greedy output, only
faster; with `nll` it is the paper's speed-quality trade-off with one knob, `rollback_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bild.costs import CostModel
from bild.policy import DraftStep, Outcome, Verification
from bild.registry import register_policy
from policies.rules import RollbackRule, RulePolicy

BINS = 20
PRIOR = 2.0  # pseudo-observations behind each bin's starting guess (its max probability)


@dataclass
class AdaptiveState:
    accepted: list[float] = field(default_factory=lambda: [PRIOR * (i + 0.5) / BINS for i in range(BINS)])
    rejected: list[float] = field(default_factory=lambda: [PRIOR * (1 - (i + 0.5) / BINS) for i in range(BINS)])
    tokens: float = 1.0  # tokens of the rounds so far (a prior of one round of large-only decoding)
    cost: float = 1.0  # their modelled time, in one-token large passes
    survival: float = 1.0  # probability that every pending draft survives
    pending: list[int] = field(default_factory=list)  # the bins of the pending drafts
    discarded: tuple[int, int] | None = None  # (bin, token) of the draft a fallback threw away
    seen: list[int] = field(default_factory=lambda: [0] * BINS)  # drafts proposed, by bin

    @property
    def rate(self) -> float:
        return self.tokens / self.cost

    def survives(self, bin_: int) -> float:
        return self.accepted[bin_] / (self.accepted[bin_] + self.rejected[bin_])

    @property
    def mean_survival(self) -> float:
        """The survival of the next draft before it is seen: each bin's, weighted by how often drafts fall there."""
        total = sum(self.seen)
        if not total:
            return 0.5
        return sum(n * self.survives(b) for b, n in enumerate(self.seen)) / total


def bin_of(max_prob: float) -> int:
    return min(int(max_prob * BINS), BINS - 1)


@register_policy("adaptive")
class AdaptivePolicy(RulePolicy):
    """Keep drafting while another draft's expected gain exceeds its cost, learned online: no thresholds."""

    rollback_rule: RollbackRule = "exact"  # lossless by default; nll: the paper's trade-off, one knob

    def new_state(self) -> AdaptiveState:
        return AdaptiveState()

    def before_generation(self, state: AdaptiveState, prompt_ids: list[int]) -> None:
        state.survival, state.pending, state.discarded = 1.0, [], None

    def fallback(self, step: DraftStep) -> bool:
        """Discard the draft when even verifying it with the pending ones is not worth its extra token."""
        state = step.state
        survival = state.survival * state.survives(bin_of(step.max_prob))
        return survival < state.rate * self.verify_cost(step.costs, step.pending + 1)

    def after_draft(self, state: AdaptiveState, step: DraftStep, fell_back: bool) -> None:
        bin_ = bin_of(step.max_prob)
        state.seen[bin_] += 1
        if fell_back:
            state.discarded = (bin_, step.token)
        else:
            state.survival *= state.survives(bin_)
            state.pending.append(bin_)

    def stop_drafting(self, step: DraftStep) -> bool:
        """Verify now when a further draft, at the average survival, is not worth a small pass and a token."""
        state, costs = step.state, step.costs
        gain = state.survival * state.mean_survival
        return gain < state.rate * (costs.ratio + self.verify_cost(costs, step.pending + 1))

    @staticmethod
    def verify_cost(costs: CostModel, pending: int) -> float:
        """What verifying one more draft adds to a verification of `pending` drafts, in one-token large passes."""
        return max(costs.large.pass_seconds(pending + 2) - costs.large.pass_seconds(pending + 1), 0.0
                   ) / costs.large.pass_seconds(1)

    def after_verification(self, state: AdaptiveState, verification: Verification, outcome: Outcome) -> None:
        for i, bin_ in enumerate(state.pending[: outcome.drafted]):
            if i < outcome.kept:
                state.accepted[bin_] += 1
            else:  # the first rejected draft; later ones were never judged on their own
                state.rejected[bin_] += 1
                break
        if state.discarded is not None and outcome.kept == outcome.drafted:
            # the large model has just judged the position of the discarded draft too: would it have
            # survived? Without this, doubtful bins would never be tried again once they look bad.
            bin_, token = state.discarded
            survived = self.accepts(verification, verification.n, token)
            if survived is not None:
                (state.accepted if survived else state.rejected)[bin_] += 1
        costs = verification.costs
        small_passes = outcome.drafted + (outcome.ended == "fallback")  # a discarded draft cost a pass too
        state.cost += (small_passes * costs.small.pass_seconds(1) + costs.large.pass_seconds(outcome.drafted + 1)
                       ) / costs.large.pass_seconds(1)
        state.tokens += outcome.kept + 1
        state.survival, state.pending, state.discarded = 1.0, [], None
