"""The `Policy` interface: every decision BiLD makes, its optional hooks, and the views it reads.

The engine (bild/engine.py) knows nothing about thresholds. At each step it shows the policy
what the small model predicts (`DraftStep`) and asks `fallback`: hand control to the large
model? When the large model has run over the pending drafts, it shows both models' predictions
(`Verification`) and asks `rollback`: how many drafts survive?

Parameters are immutable pydantic fields, validated on construction, with bounds
(`Field(ge=..., le=...)`) that document the sensible range and from which tuners derive search
spaces. State is explicit: `new_state()` creates the object a policy keeps between decisions
(None by default). The engine creates one per generation unless the caller passes one (a bench
or tune passes one per method and run, so a policy that learns across prompts keeps what it
learned; a fresh `new_state()` is the reset). Decisions only decide; what a policy remembers is
updated in the optional hooks, no-ops by default, in the spirit of Optuna's
`before_trial`/`after_trial`:

    before_generation(state, prompt_ids)              a generation starts: reset per-prompt parts
    after_draft(state, step, fell_back)               `fallback` decided on this draft
    after_verification(state, verification, outcome)  a verification finished, with its outcome

Every view carries the state as `.state`, beside `.history` (what happened earlier in this
generation) and `.costs` (what a pass of each model costs: the cost model the generation was
given, else the pair's, else a prior from the models' depths). Views compute derived quantities
lazily and at most once; the per-row summary (argmax, top probabilities, entropy, the drafts'
NLL) comes with the pass, computed on the device and copied to the host once, so reading it
costs nothing more.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict

from bild.costs import CostModel
from bild.forward import Pass
from bild.sampling import Sampler
from bild.schedule import Round
from bild.sources import DraftSource, Proposal

DraftEnd = Literal["fallback", "stop", "cap", "eos", "length", "lookup"]  # why drafting ended (not generation)


class Outcome(NamedTuple):
    """How one verification ended: `kept` of `drafted` drafts survived; `ended` says why drafting had ended
    (the policy fell back or stopped drafting, the cap, a drafted EOS, max_new_tokens, or it drafted a source's
    proposal); `looked_up` of the drafts came from a draft source (after the small model's)."""

    drafted: int
    kept: int
    ended: DraftEnd
    looked_up: int = 0

    @property
    def reason(self) -> DraftEnd:
        """Deprecated name of `ended`."""
        return self.ended

    @property
    def round(self) -> Round:
        """The round this verification closed, as schedules and the oracle count it."""
        return Round(self.drafted, self.kept, self.ended == "fallback", self.looked_up)


@dataclass
class History:
    """What happened earlier in this generation (the engine updates it after each verification)."""

    tokens: list[int]  # the decoder sequence so far (prompt, or decoder start, then new tokens)
    begin: int  # tokens[begin:] are new
    drafted: int = 0  # drafts verified so far
    accepted: int = 0  # of those, kept
    last: Outcome | None = None  # the previous verification's outcome
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def acceptance(self) -> float | None:
        """This generation's running acceptance rate of drafts (None before the first draft)."""
        return self.accepted / self.drafted if self.drafted else None

    def record(self, outcome: Outcome) -> None:
        self.drafted += outcome.drafted
        self.accepted += outcome.kept
        self.last = outcome
        self.outcomes.append(outcome)


class Context(NamedTuple):
    """What every view of one generation shares."""

    sampler: Sampler
    history: History
    state: Any  # the policy's state (see `Policy.new_state`)
    costs: CostModel  # what a pass of each model costs (calibrated, or a prior from the models' depths)


class View:
    """What every view of a generation carries: its sampler, history, the policy's state and the costs."""

    sampler: Sampler
    history: History
    state: Any
    costs: CostModel

    def __init__(self, context: Context) -> None:
        self.context = context
        self.sampler, self.history, self.state, self.costs = context


class DraftStep(View):
    """What the small model predicts for the next token."""

    def __init__(self, out: Pass, pending: int, position: int, context: Context, proposed: int | None = None
                 ) -> None:
        super().__init__(context)
        self.out = out  # the pass; its last row predicts the next token
        self.pending = pending  # draft tokens since the large model last ran
        self.position = position  # new tokens so far, pending drafts included
        self.proposed = proposed  # a draft source's guess for this token, shown to the policy and not taken

    @property
    def agrees(self) -> bool | None:
        """Whether the draft source's guess is the small model's most likely token (None: no guess). Drafts where
        both agree are kept far more often than their confidence says (docs/results.md §11b)."""
        return None if self.proposed is None else self.proposed == self.argmax

    @property
    def logits(self) -> torch.Tensor:  # [V]
        return self.out.logits[-1]

    @property
    def max_prob(self) -> float:
        return self.out.top_probs[-1][0]

    @property
    def top_probs(self) -> list[float]:
        """The probabilities of the small model's most likely tokens, most likely first."""
        return self.out.top_probs[-1]

    @property
    def entropy(self) -> float:
        """Entropy (nats) of the small model's distribution."""
        return self.out.entropy[-1]

    @property
    def argmax(self) -> int:
        return self.out.argmax[-1]

    @cached_property
    def probs(self) -> torch.Tensor:  # [V]
        """The small model's distribution (softmax of its logits, whatever the sampling settings)."""
        return torch.softmax(self.logits.float(), dim=-1)

    @property
    def hidden(self) -> torch.Tensor:  # [H]
        """The small model's final hidden state at this position (a tensor the step owns)."""
        return self.out.hidden

    @cached_property
    def sampling_probs(self) -> torch.Tensor | None:  # [V]
        """The distribution the draft is drawn from (None when greedy)."""
        return None if self.sampler.greedy else self.sampler.distribution(self.logits)

    @cached_property
    def token(self) -> int:
        """The draft the engine keeps unless the policy falls back: greedy, or drawn once."""
        return self.argmax if self.sampler.greedy else self.sampler.pick(self.logits, self.sampling_probs)


class LookupStep(View):
    """A draft a source proposed (no small-model pass): its token and where it came from. Under sampling it is a
    one-hot proposal, so the acceptance rule keeps it with the large model's probability of it (lossless)."""

    def __init__(self, token: int, source: str, pending: int, position: int, vocab: int, context: Context) -> None:
        super().__init__(context)
        self.token, self.source, self.pending, self.position, self.vocab = token, source, pending, position, vocab

    @cached_property
    def sampling_probs(self) -> torch.Tensor:  # [V]
        """The proposal as a distribution: all its mass on the token."""
        probs = torch.zeros(self.vocab)
        probs[self.token] = 1.0
        return probs

    @cached_property
    def logits(self) -> torch.Tensor:  # [V]
        return torch.log(self.sampling_probs)


class ProposalView(View):
    """A draft source's proposal before a small-model pass: what the policy's `lookup` decides on."""

    def __init__(self, proposal: Proposal, pending: int, position: int, room: int, context: Context) -> None:
        super().__init__(context)
        self.tokens, self.source, self.match = proposal
        self.pending = pending  # drafts since the large model last ran
        self.position = position  # new tokens so far, pending drafts included
        self.room = room  # how many drafts the cap and max_new_tokens still allow (the proposal is no longer)


class Verdict(NamedTuple):
    """A rollback decision: `kept` drafts survive; the next token is drawn from `correction`
    (a distribution over the vocabulary) or, when None, is the large model's own token."""

    kept: int
    correction: torch.Tensor | None = None  # [V]


class Verification(View):
    """The pending drafts and the large model's predictions at each of their positions."""

    def __init__(self, steps: list[DraftStep | LookupStep], out: Pass, position: int, context: Context) -> None:
        super().__init__(context)
        self.steps = steps  # the n draft steps, in order (`LookupStep`s, from a draft source, after the small's)
        self.draft_tokens = [s.token for s in steps]  # [n] tokens drafted
        self.out = out  # rows 0..n of the large model's pass: row i predicts draft i, row n the next token
        self.position = position  # new tokens before the first draft

    @property
    def n(self) -> int:
        return len(self.draft_tokens)

    @property
    def greedy(self) -> bool:
        return self.sampler.greedy

    @property
    def large_logits(self) -> torch.Tensor:  # [n + 1, V]
        return self.out.logits

    @property
    def large_tokens(self) -> list[int]:
        """The large model's greedy token at each of the n + 1 positions."""
        return self.out.argmax

    @property
    def draft_nll(self) -> list[float]:
        """−log p_large(draft i) for each draft: the paper's rollback distance. [n]"""
        return self.out.next_nll[: self.n]

    @cached_property
    def draft_logits(self) -> torch.Tensor:  # [n, V]
        """The drafts' logits, on the large model's output device (the small model may live elsewhere; a source's
        draft is one-hot: 0 at its token, -inf elsewhere)."""
        return torch.stack([s.logits.to(self.large_logits.device) for s in self.steps])

    @cached_property
    def draft_probs(self) -> torch.Tensor:  # [n, V]
        """The distributions the drafts were drawn from (sampling only), on the large model's output device."""
        return torch.stack([s.sampling_probs.to(self.large_logits.device) for s in self.steps])

    @cached_property
    def large_probs(self) -> torch.Tensor:  # [n + 1, V]
        """The large model's distributions under the same sampling settings (sampling only)."""
        return self.sampler.distribution(self.large_logits)

    @cached_property
    def draft_ids(self) -> torch.Tensor:  # [n]
        return torch.tensor(self.draft_tokens, device=self.large_logits.device)

    @cached_property
    def first_mismatch(self) -> int:
        """Index of the first draft the large model would not have chosen itself (n if none)."""
        for i, (d, g) in enumerate(zip(self.draft_tokens, self.large_tokens, strict=False)):
            if d != g:
                return i
        return self.n


class Policy(BaseModel, ABC):
    """Base class of every policy: subclass it, declare parameters as fields, implement both rules.

    Optional: `stop_drafting` (keep a draft, but verify now); `new_state` and the hooks
    `before_generation` / `after_draft` / `after_verification` for a policy that keeps state;
    `describe` for its line in `bild policies` (default: the class docstring).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    name: ClassVar[str] = ""  # set by the registry's decorator
    uses_small: ClassVar[bool] = True  # False: drafts only from `draft_source`; the small model never runs

    @abstractmethod
    def fallback(self, step: DraftStep) -> bool:
        """True to discard this draft and let the large model produce the next token."""

    def draft_source(self) -> DraftSource | None:
        """Where this policy takes drafts from besides the small model (None: the small model only). Asked once
        per generation; the engine then shows each of its proposals to `lookup` before a small-model pass."""
        return None

    def lookup(self, proposal: ProposalView) -> int:
        """How many of a draft source's proposed tokens (`proposal.tokens`, at most `proposal.room`) to draft,
        in place of the small model's next pass (0: none). Taking any ends drafting: they are verified next."""
        return 0

    def stop_drafting(self, step: DraftStep) -> bool:
        """Asked after a draft is kept: True to verify the pending drafts now, this one included.

        Optional (default False: draft until `fallback`). Where a verification pass grows little
        with its length (a GPU), keeping a doubtful draft and verifying it costs less than the
        small-model pass that `fallback` throws away.
        """
        return False

    @abstractmethod
    def rollback(self, verification: Verification) -> int | Verdict:
        """How many of the `verification.n` pending draft tokens survive (0..n).

        The engine keeps that many, then appends the large model's token at the next position
        (greedy: its argmax; sampling: a draw from its distribution). Return a `Verdict` to
        draw that token from another distribution instead (speculative sampling's residual).
        """

    def new_state(self) -> Any:
        """The mutable state this policy keeps between decisions (None: stateless)."""
        return None

    def before_generation(self, state: Any, prompt_ids: list[int]) -> None:
        """A generation starts (reset per-prompt parts of `state` here)."""

    def after_draft(self, state: Any, step: DraftStep, fell_back: bool) -> None:
        """`fallback` returned `fell_back` for this draft (update what the next decisions read here)."""

    def after_verification(self, state: Any, verification: Verification, outcome: Outcome) -> None:
        """A verification finished: `outcome.kept` of `outcome.drafted` drafts survived."""

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def params(self) -> dict[str, Any]:
        """The parameters as JSON values (a path as its text), what reports and studies record."""
        return self.model_dump(mode="json")
