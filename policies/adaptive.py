"""`adaptive`: keep drafting while another draft is worth its cost; no thresholds to tune.

Decoding runs in rounds: some drafts, then one verification. Over a run, what matters is the
rate R = tokens per unit of time. After each draft the policy weighs three ways to go on, each
by what it adds over verifying the pending drafts now, at that rate (times in units of a
one-token large pass, from the pair's cost model, `step.costs`: calibrated by `bild
calibrate`/bench/tune, else a prior from the models' depths):

    value = expected tokens added - R * (small passes + what the longer verification adds)

- discard the draft and verify (the fallback): 0;
- keep it and verify: its survival (every pending draft and it accepted) against one more
  verified token;
- keep it and draft m more, at the average survival of a draft not yet seen: the best m up to
  `LOOKAHEAD`.

Looking further than one draft matters because verification cost is not linear: on the pairs
we calibrated, the second verified token costs several times what each one after the third
does, so a one-step rule stops before drafts that would pay for it together. This is the optimal
stopping rule of a renewal-reward process (go on while the gain rate beats the average rate),
the idea behind SpecDec++'s and AdaEDL's stopping rules and transformers' online confidence
threshold.

What it learns, online, in its state (`new_state()`; one per run, so it carries across prompts):
the probability that a draft survives given the small model's max probability (Beta counts in
`BINS` bins, from the outcome of every verification: drafts up to the first rejected one), and
the rate R (tokens over modelled time of the rounds so far). With `agreement` (and a draft
source), the bins are kept apart by whether context lookup's guess for the token is the small
model's top-1 (`step.agrees`: yes, no, or no guess): at the same confidence, drafts both agree on
are kept far more often. It is off by default: on the tuning prompts it was 1% slower modelled
(2.06× against 2.09×; docs/results.md §11b): lookup-first already drafts where longer matches
agree, and the guesses left to the small model's drafts rest on one token. Everything is
counted, nothing timed, so a run is reproducible from its seed and a fresh state.

Context lookup goes first (`lookup_min`, policies/lookup.py): where the context repeats, its
proposal is drafted and verified at once, without the small model; only the small model's drafts
teach the survival bins, and only rounds without lookup count in the rate R: a lookup round is
not an alternative open where the context does not repeat, and its near-free tokens would make
every small draft look too dear (on the real pair in bf16 `adaptive` stopped at τ 4.0 where
`exact` drafted to 7.6). The default, `lookup_min=2` as `exact`'s, tied with 1 for the fastest of
0–3 on the tuning prompts (docs/results.md §11).

With the `exact` rollback rule (the default) the output is the large model's greedy output, only
faster; with `nll` it is the paper's speed-quality trade-off with one knob, `rollback_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from bild.costs import CostModel
from bild.policy import DraftStep, Outcome, Verification
from bild.registry import register_policy
from policies.lookup import LookupFirst
from policies.rules import RollbackRule, RulePolicy

BINS = 20
PRIOR = 2.0  # pseudo-observations behind each bin's starting guess (its max probability)
LOOKAHEAD = 4  # further drafts weighed at once: costs are nearly flat beyond; longer changed no decision on pycode


AGREEMENT = (None, True, False)  # the source made no guess; its guess is the small model's top-1; it is another


@dataclass
class AdaptiveState:
    # bin b holds drafts of max probability in [b % BINS, b % BINS + 1) / BINS and agreement AGREEMENT[b // BINS]
    accepted: list[float] = field(default_factory=lambda: [PRIOR * (i % BINS + 0.5) / BINS
                                                           for i in range(BINS * len(AGREEMENT))])
    rejected: list[float] = field(default_factory=lambda: [PRIOR * (1 - (i % BINS + 0.5) / BINS)
                                                           for i in range(BINS * len(AGREEMENT))])
    tokens: float = 1.0  # tokens of the rounds so far (a prior of one round of large-only decoding)
    cost: float = 1.0  # their modelled time, in one-token large passes
    survival: float = 1.0  # probability that every pending draft survives
    pending: list[int] = field(default_factory=list)  # the bins of the pending drafts
    discarded: tuple[int, int] | None = None  # (bin, token) of the draft a fallback threw away
    seen: list[int] = field(default_factory=lambda: [0] * BINS * len(AGREEMENT))  # drafts proposed, by bin

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


def bin_of(max_prob: float, agrees: bool | None = None) -> int:
    return AGREEMENT.index(agrees) * BINS + min(int(max_prob * BINS), BINS - 1)


@register_policy("adaptive")
class AdaptivePolicy(LookupFirst, RulePolicy):
    """Keep drafting while another draft's expected gain exceeds its cost, learned online: no thresholds."""

    rollback_rule: RollbackRule = "exact"  # lossless by default; nll: the paper's trade-off, one knob
    agreement: bool = Field(False, description=(
        "learn a draft's survival apart for drafts context lookup agrees with, disagrees with, or has no guess for"))

    def bin(self, step: DraftStep) -> int:
        return bin_of(step.max_prob, step.agrees if self.agreement else None)

    def new_state(self) -> AdaptiveState:
        return AdaptiveState()

    def before_generation(self, state: AdaptiveState, prompt_ids: list[int]) -> None:
        state.survival, state.pending, state.discarded = 1.0, [], None

    def fallback(self, step: DraftStep) -> bool:
        """Discard the draft when keeping it, then verifying or drafting on, is worth less than verifying now."""
        state, costs, k = step.state, step.costs, step.pending
        survival = state.survival * state.survives(self.bin(step))
        keep = survival - state.rate * self.verify_cost(costs, k, k + 1)
        return keep + self.drafting_on(state, costs, survival, k + 1) < 0

    def after_draft(self, state: AdaptiveState, step: DraftStep, fell_back: bool) -> None:
        bin_ = self.bin(step)
        state.seen[bin_] += 1
        if fell_back:
            state.discarded = (bin_, step.token)
        else:
            state.survival *= state.survives(bin_)
            state.pending.append(bin_)

    def stop_drafting(self, step: DraftStep) -> bool:
        """Verify now when no number of further drafts, at the average survival, is worth its passes."""
        return self.drafting_on(step.state, step.costs, step.state.survival, step.pending + 1) <= 0

    def drafting_on(self, state: AdaptiveState, costs: CostModel, survival: float, pending: int) -> float:
        """The best value of drafting 1..LOOKAHEAD more drafts after `pending` ones that all survive with
        probability `survival` (0 if none is worth it), in tokens net of their time at the run's rate."""
        draft = costs.ratio + costs.overhead_per_pass / costs.large.pass_seconds(1)
        best, gain, mean = 0.0, 0.0, state.mean_survival
        for m in range(1, LOOKAHEAD + 1):
            survival *= mean
            gain += survival
            best = max(best, gain - state.rate * (m * draft + self.verify_cost(costs, pending, pending + m)))
        return best

    @staticmethod
    def verify_cost(costs: CostModel, pending: int, more: int) -> float:
        """What verifying `more` drafts costs over verifying `pending`, in one-token large passes."""
        large = costs.large
        return (large.pass_seconds(more + 1) - large.pass_seconds(pending + 1)) / large.pass_seconds(1)

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
        if not outcome.looked_up:  # the rate the stopping rule weighs against: its own rounds', not lookup's
            costs = verification.costs
            small_passes = outcome.drafted + (outcome.ended == "fallback")  # a discarded draft cost a pass too
            state.cost += (small_passes * costs.small.pass_seconds(1) + costs.large.pass_seconds(outcome.drafted + 1)
                           ) / costs.large.pass_seconds(1)
            state.tokens += outcome.kept + 1
        state.survival, state.pending, state.discarded = 1.0, [], None
