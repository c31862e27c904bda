"""The BiLD decoding loop and the single-model baseline (batch size 1).

    generate(pair, prompt, policy, config)
        start   encode the prompt; reset each model's long-lived runner (bild/forward.py)
        draft   the small model proposes tokens, one pass each, until the policy falls back (the
                draft is discarded) or stops drafting (the draft is kept), the cap on consecutive
                drafts is hit, the draft is EOS or max_new_tokens is reached. A policy with a
                draft source (bild/sources.py: context lookup) is shown its proposal before each
                small pass, and may draft proposed tokens instead (then they are verified)
        verify  the large model runs ONCE over every position it has not seen (its previous
                token and the pending drafts); the policy's rollback says how many drafts
                survive; the large model's token is appended after them (its argmax, or a draw
                when sampling); both caches are rewound to the surviving prefix
        repeat draft and verify until EOS, a stop string or max_new_tokens

Unlike the authors' code, the first token comes from the small model too (the large model's
first call prefills the prompt together with the first drafts), so a policy that never falls
back is exactly small-only decoding. Greedy by default; `GenerationConfig.temperature > 0`
samples both models from one seeded generator (bild/sampling.py).

Each model's passes go through its pair's long-lived runner on the fast path the pair resolves
for it once (bild/forward.py); the result's statistics say which path each model ran on.
Inputs and what a policy returns are checked in bild/checks.py.

Batch size 1 only (the paper's setting): speculative acceptance lengths differ per sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from bild.checks import (
    Prompt,
    as_config,
    as_policy,
    checked_decision,
    checked_proposal,
    checked_rollback,
    checked_take,
    encode_prompt,
    hook,
)
from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.decoder import Decoder
from bild.errors import BildError
from bild.observer import Observer, StatsRecorder
from bild.pair import ModelPair
from bild.policy import Context, DraftEnd, DraftStep, History, LookupStep, Outcome, Policy, ProposalView, Verification
from bild.sampling import Sampler
from bild.schedule import Round, widest
from bild.stats import GenerationResult
from bild.stopping import Stopper

__all__ = ["Prompt", "encode_prompt", "generate", "generate_single"]


class Generation:
    """The state one generation's steps share."""

    def __init__(self, pair: ModelPair, prompt: Prompt, config: GenerationConfig, models: tuple[str, ...],
                 policy: Policy | None = None, state: Any = None, observers: Sequence[Observer] = (),
                 costs: CostModel | None = None) -> None:
        self.started = time.perf_counter()
        self.pair, self.config, self.policy = pair, config, policy
        self.prompt_ids = encode_prompt(pair, prompt, config.max_new_tokens)
        self.seq = [pair.large.config.decoder_start_token_id] if pair.encoder_decoder else list(self.prompt_ids)
        self.begin = len(self.seq)  # seq[begin:] are new tokens
        self.cap = config.draft_cap()
        # a static cache holds the prompt, every new token, and the drafts beyond max_new_tokens a last
        # verification may feed (up to the cap, plus the large model's own token)
        capacity = len(self.seq) + config.max_new_tokens + self.cap + 1
        encoder_ids = self.prompt_ids if pair.encoder_decoder else None
        self.source = hook(policy, "draft_source", policy.draft_source) if policy is not None else None
        if self.source is not None:
            self.source.reset()
        if policy is not None and not policy.uses_small:
            models = tuple(m for m in models if m != "small")
        most = widest(self.cap, self.source is not None) if policy is not None else {m: 1 for m in models}
        self.decoders = {m: Decoder(pair.runner(m, config.fast_path, most[m]), capacity, encoder_ids) for m in models}
        self.rounds: list[Round] = []
        self.stopper = Stopper(pair.tokenizer, pair.eos_ids, config.max_new_tokens, config.stop_strings)
        self.sampler = Sampler(config, pair.device)
        self.history = History(self.seq, self.begin)
        self.state = state
        self.context = Context(self.sampler, self.history, state, costs or pair.costs)
        self.recorder = StatsRecorder()
        self.observers = [self.recorder, *observers]
        self.cut: int | None = None
        for observer in self.observers:
            observer.before_generation(self.prompt_ids)
        if policy is not None:
            hook(policy, "before_generation", policy.before_generation, state, self.prompt_ids)

    @property
    def new_tokens(self) -> int:
        return len(self.seq) - self.begin

    def stop_check(self, checked: int) -> bool:
        """Whether generation must stop; the first `checked` new tokens were checked before."""
        self.cut = self.stopper.cut(self.seq, self.begin, checked)
        return self.cut is not None

    def finish(self) -> GenerationResult:
        new = self.seq[self.begin: self.begin + self.cut]
        stats = self.recorder.stats
        if "small" in self.decoders:
            stats.small = self.decoders["small"].stats()
        if "large" in self.decoders:
            stats.large = self.decoders["large"].stats()
        stats.new_tokens = len(new)
        stats.wall_seconds = time.perf_counter() - self.started
        text = self.stopper.trim_text(self.pair.tokenizer.decode(new, skip_special_tokens=True))
        result = GenerationResult(text=text, token_ids=new, prompt_tokens=len(self.prompt_ids),
                                  stop_reason=self.stopper.reason, stats=stats, rounds=self.rounds)
        for observer in self.observers:
            observer.after_generation(result)
        return result


def draft(g: Generation) -> tuple[list[DraftStep | LookupStep], DraftEnd]:
    """Small-model passes (or a source's proposal) until the policy falls back or a limit is hit: the drafts and
    why drafting ended."""
    small, policy, steps = g.decoders.get("small"), g.policy, []
    while True:
        if len(steps) == g.cap:
            return steps, "cap"
        if g.new_tokens >= g.config.max_new_tokens:
            return steps, "length"
        proposed = None
        if g.source is not None:
            took, proposed = looked_up(g, steps)
            if took:
                return steps, "eos" if steps[-1].token in g.stopper.eos_ids else "lookup"
        if small is None:  # a policy of source drafts only: no proposal taken, so the large model decodes
            return steps, "stop"
        step = DraftStep(small.catch_up(g.seq, 1), len(steps), g.new_tokens, g.context, proposed)
        fell_back = checked_decision(policy, "fallback", policy.fallback, step)
        hook(policy, "after_draft", policy.after_draft, g.state, step, fell_back)
        for observer in g.observers:
            observer.after_draft(step, fell_back)
        if fell_back:
            return steps, "fallback"
        g.seq.append(step.token)
        steps.append(step)
        if step.token in g.stopper.eos_ids:
            return steps, "eos"
        if checked_decision(policy, "stop_drafting", policy.stop_drafting, step):
            return steps, "stop"


def looked_up(g: Generation, steps: list[DraftStep | LookupStep]) -> tuple[bool, int | None]:
    """Show the source's proposal to the policy; draft the tokens it takes (up to an EOS). Whether it took any,
    and the proposal's next token when it took none (the small model's step shows it: agreement is a signal)."""
    room = min(g.cap - len(steps), g.config.max_new_tokens - g.new_tokens)
    proposal = g.source.propose(g.seq, room)
    if proposal is None or not proposal.tokens:
        return False, None
    checked_proposal(g.source, proposal, room, g.pair.vocab_size)
    view = ProposalView(proposal, len(steps), g.new_tokens, room, g.context)
    take = checked_take(g.policy, hook(g.policy, "lookup", g.policy.lookup, view), len(proposal.tokens))
    for token in proposal.tokens[:take]:
        steps.append(LookupStep(token, proposal.source, len(steps), g.new_tokens, g.pair.vocab_size, g.context))
        g.seq.append(token)
        if token in g.stopper.eos_ids:
            break
    return take > 0, None if take else proposal.tokens[0]


def verify(g: Generation, steps: list[DraftStep | LookupStep], ended: DraftEnd) -> bool:
    """One large-model pass over every unseen position, the rollback decision, the next token, the
    rewind; whether generation must stop."""
    n = len(steps)
    checked = g.new_tokens - n  # committed before these drafts, already checked for stops
    verification = Verification(steps, g.decoders["large"].catch_up(g.seq, n + 1), checked, g.context)
    decision = hook(g.policy, "rollback", g.policy.rollback, verification) if n else 0
    kept, resample = checked_rollback(g.policy, decision, n, g.pair.vocab_size)
    if g.sampler.greedy and resample is None:
        token = verification.large_tokens[kept]
    else:
        token = g.sampler.pick(verification.large_logits[kept],
                               verification.large_probs[kept] if resample is None else resample)
    del g.seq[len(g.seq) - (n - kept):]
    g.seq.append(token)
    for decoder in g.decoders.values():
        decoder.rewind(len(g.seq) - 1)
    if g.source is not None:
        g.source.rewind(len(g.seq) - 1)
    outcome = Outcome(n, kept, ended, sum(isinstance(s, LookupStep) for s in steps))
    g.rounds.append(outcome.round)
    g.history.record(outcome)
    hook(g.policy, "after_verification", g.policy.after_verification, g.state, verification, outcome)
    for observer in g.observers:
        observer.after_verification(verification, outcome)
    return g.stop_check(checked)


@torch.inference_mode()
def generate(pair: ModelPair, prompt: Prompt, policy: Policy | str, config: GenerationConfig | dict | None = None,
             *, state: Any = None, observers: Sequence[Observer] = (), costs: CostModel | None = None
             ) -> GenerationResult:
    """Decode one prompt with the small model drafting and the large model called per `policy`.

    `state`: the policy's state (default: a fresh `policy.new_state()`); pass the same object to
    successive calls to let a policy learn across prompts. `costs`: what policies read as
    `step.costs` (default: the pair's `cost_model`, else a prior from the two models' depths).
    """
    policy, config = as_policy(policy), as_config(config)
    state = hook(policy, "new_state", policy.new_state) if state is None else state
    g = Generation(pair, prompt, config, ("small", "large"), policy, state, observers, costs)
    while not verify(g, *draft(g)):
        pass
    return g.finish()


@torch.inference_mode()
def generate_single(pair: ModelPair, prompt: Prompt, which: str = "large",
                    config: GenerationConfig | dict | None = None,
                    *, observers: Sequence[Observer] = ()) -> GenerationResult:
    """One model of the pair alone (greedy or sampled): the `large` and `small` baselines."""
    if which not in ("small", "large"):
        raise BildError(f"unknown model {which!r}: use 'small' or 'large'")
    g = Generation(pair, prompt, as_config(config), (which,), observers=observers)
    decoder = g.decoders[which]
    while True:
        out = decoder.catch_up(g.seq, 1)
        g.seq.append(out.argmax[-1] if g.sampler.greedy else g.sampler.pick(out.logits[-1]))
        if g.stop_check(g.new_tokens - 1):
            return g.finish()
