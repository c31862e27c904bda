"""The BiLD decoding loop and the single-model baseline (batch size 1).

    generate(pair, prompt, policy, config)
        start   encode the prompt; reset each model's long-lived runner (bild/forward.py)
        draft   the small model proposes tokens, one pass each, until the policy falls back (the
                draft is discarded) or stops drafting (the draft is kept), the cap on consecutive
                drafts is hit, the draft is EOS or max_new_tokens is reached
        verify  the large model runs ONCE over every position it has not seen (its previous
                token and the pending drafts); the policy's rollback says how many drafts
                survive; the large model's token is appended after them (its argmax, or a draw
                when sampling); both caches are rewound to the surviving prefix
        repeat draft and verify until EOS, a stop string or max_new_tokens

Unlike the authors' code, the first token comes from the small model too (the large model's
first call prefills the prompt together with the first drafts), so a policy that never falls
back is exactly small-only decoding. Greedy by default; `GenerationConfig.temperature > 0`
samples both models from one seeded generator (bild/sampling.py).

Batch size 1 only (the paper's setting): speculative acceptance lengths differ per sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import ValidationError

from bild.config import GenerationConfig
from bild.decoder import Decoder
from bild.errors import BildError
from bild.forward import PaddedRunner, Runner, make_runner, resolve_fast_path
from bild.observer import Observer
from bild.pair import ModelPair
from bild.policy import Context, DraftStep, History, Outcome, Policy, StopReason, Verdict, Verification
from bild.registry import describe_errors, make_policy
from bild.sampling import Sampler
from bild.stats import GenerationResult, StatsRecorder
from bild.stopping import Stopper

Prompt = str | Sequence[int] | torch.Tensor

# --- checking what the caller gave ----------------------------------------------------------------


def as_config(config: GenerationConfig | dict | None) -> GenerationConfig:
    if config is None or isinstance(config, GenerationConfig):
        return config or GenerationConfig()
    if isinstance(config, dict):
        try:
            return GenerationConfig(**config)
        except ValidationError as e:
            raise BildError(f"invalid generation config: {describe_errors(e, GenerationConfig)}") from None
    raise BildError(f"config must be a GenerationConfig or a dict, not {type(config).__name__}")


def as_policy(policy: Policy | str | type[Policy]) -> Policy:
    return policy if isinstance(policy, Policy) else make_policy(policy)


def encode_prompt(pair: ModelPair, prompt: Prompt, max_new_tokens: int) -> list[int]:
    """Prompt token ids, after checking that this is one non-empty prompt that fits the context."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise BildError(f"batch size {prompt.shape[0]} asked for, but BiLD decodes one prompt at a "
                            "time (batch size 1, as in the paper): loop over the prompts")
        if prompt.dtype.is_floating_point:
            raise BildError(f"prompt token ids must be integers, got a {prompt.dtype} tensor")
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, (list, tuple)):
        if any(isinstance(t, str) for t in prompt):
            raise BildError(f"a list of {len(prompt)} prompt(s) given, but BiLD decodes one prompt at a time "
                            "(batch size 1, as in the paper): pass one string, and loop over prompts")
        bad = next((t for t in prompt if not isinstance(t, int) or isinstance(t, bool)), None)
        if bad is not None:
            raise BildError(f"a prompt is a string or a list of token ids (ints); this list holds {bad!r}")
    elif not isinstance(prompt, str):
        raise BildError(f"a prompt is a string or a list of token ids, not {type(prompt).__name__}")
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BildError(f"the prompt is not valid text ({e.reason} at character {e.start}): "
                            "remove lone surrogates") from None
    ids = pair.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
    if not ids or (isinstance(prompt, str) and not prompt):
        raise BildError("the prompt is empty: give at least one token of text")
    bad = next((t for t in ids if not 0 <= t < pair.vocab_size), None)
    if bad is not None:
        raise BildError(f"prompt token id {bad} is outside the vocabulary (0..{pair.vocab_size - 1})")
    if not pair.encoder_decoder:
        for name, model in (("small", pair.small), ("large", pair.large)):
            ctx = pair.context_length(model)
            if ctx is not None and len(ids) + max_new_tokens > ctx:
                raise BildError(f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones are asked for, "
                                f"but the {name} model's context is {ctx} tokens: shorten the prompt or "
                                "lower max_new_tokens")
    return ids


def checked_fallback(policy: Policy, decision: Any, method: str = "fallback") -> bool:
    if not isinstance(decision, bool) and type(decision).__name__ != "bool_":  # numpy's bool too
        raise BildError(f"policy {type(policy).__name__}.{method} returned {decision!r} "
                        f"({type(decision).__name__}); it must return True or False")
    return bool(decision)


def checked_rollback(policy: Policy, decision: Any, n: int, vocab: int) -> Verdict:
    where = f"policy {type(policy).__name__}.rollback"
    kept, correction = decision if isinstance(decision, Verdict) else (decision, None)
    if isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= n:
        raise BildError(f"{where} returned {kept!r} ({type(kept).__name__}); it must return a whole number "
                        f"in 0..{n} (the drafts kept) or a Verdict")
    if correction is not None and (
            not isinstance(correction, torch.Tensor) or correction.shape != (vocab,)
            or not bool(torch.isfinite(correction).all()) or bool((correction < 0).any())
            or not float(correction.sum()) > 0):
        raise BildError(f"{where} returned a Verdict whose correction is not a distribution over the "
                            f"{vocab} tokens (a 1-D tensor, finite, non-negative, summing above 0)")
    return Verdict(kept, correction)


# --- one generation --------------------------------------------------------------------------------


def runner_for(pair: ModelPair, which: str, fast_path: str, most: int) -> Runner:
    """The pair's long-lived runner of one model on one fast path, padding passes of up to `most` tokens."""
    key = (which, fast_path)
    if key not in pair.runners:
        model = getattr(pair, which)
        pair.runners[key] = make_runner(model, pair.vocab_size, fast_path, most, pair.context_length(model))
    runner = pair.runners[key]
    if isinstance(runner, PaddedRunner):
        runner.widen(most)
    return runner


class Generation:
    """The state one generation's steps share."""

    def __init__(self, pair: ModelPair, prompt: Prompt, config: GenerationConfig, models: tuple[str, ...],
                 policy: Policy | None = None, state: Any = None, observers: Sequence[Observer] = ()) -> None:
        self.started = time.perf_counter()
        self.pair, self.config, self.policy = pair, config, policy
        self.prompt_ids = encode_prompt(pair, prompt, config.max_new_tokens)
        self.seq = [pair.large.config.decoder_start_token_id] if pair.encoder_decoder else list(self.prompt_ids)
        self.begin = len(self.seq)  # seq[begin:] are new tokens
        self.cap = config.draft_cap()
        fast_path = resolve_fast_path(config.fast_path, {m: getattr(pair, m) for m in models}, pair.device)
        capacity = len(self.seq) + config.max_new_tokens + self.cap + 1
        encoder_ids = self.prompt_ids if pair.encoder_decoder else None
        most = {"small": 2, "large": self.cap + 1} if policy is not None else {m: 1 for m in models}
        self.decoders = {m: Decoder(runner_for(pair, m, fast_path, most[m]), capacity, encoder_ids) for m in models}
        self.stopper = Stopper(pair.tokenizer, pair.eos_ids, config.max_new_tokens, config.stop_strings)
        self.sampler = Sampler(config, pair.device)
        self.history = History(self.seq, self.begin)
        self.state = state
        self.context = Context(self.sampler, self.history, state, pair.costs)
        self.recorder = StatsRecorder()
        self.observers = [self.recorder, *observers]
        self.cut: int | None = None
        for observer in self.observers:
            observer.before_generation(self.prompt_ids)
        if policy is not None:
            policy.before_generation(state, self.prompt_ids)

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
        for which, decoder in self.decoders.items():
            stats.add_decoder(which, decoder)
        stats.new_tokens = len(new)
        stats.wall_seconds = time.perf_counter() - self.started
        text = self.stopper.trim_text(self.pair.tokenizer.decode(new, skip_special_tokens=True))
        result = GenerationResult(text=text, token_ids=new, prompt_tokens=len(self.prompt_ids),
                                  stop_reason=self.stopper.reason, stats=stats)
        for observer in self.observers:
            observer.after_generation(result)
        return result


def draft(g: Generation) -> tuple[list[DraftStep], StopReason]:
    """Small-model passes until the policy falls back or a limit is hit: the drafts and why it stopped."""
    small, steps = g.decoders["small"], []
    while True:
        if len(steps) == g.cap:
            return steps, "cap"
        if g.new_tokens >= g.config.max_new_tokens:
            return steps, "length"
        step = DraftStep(small.catch_up(g.seq, 1), len(steps), g.new_tokens, g.context)
        fallback = checked_fallback(g.policy, g.policy.fallback(step))
        for observer in g.observers:
            observer.after_draft(step, fallback)
        if fallback:
            return steps, "fallback"
        g.seq.append(step.token)
        steps.append(step)
        if step.token in g.stopper.eos_ids:
            return steps, "eos"
        if checked_fallback(g.policy, g.policy.stop_drafting(step), "stop_drafting"):
            return steps, "stop"


def verify(g: Generation, steps: list[DraftStep], reason: StopReason) -> bool:
    """One large-model pass over every unseen position, the rollback decision, the next token, the
    rewind; whether generation must stop."""
    n = len(steps)
    checked = g.new_tokens - n  # committed before these drafts, already checked for stops
    verification = Verification(steps, g.decoders["large"].catch_up(g.seq, n + 1), checked, g.context)
    kept, resample = checked_rollback(g.policy, g.policy.rollback(verification) if n else 0, n, g.pair.vocab_size)
    if g.sampler.greedy and resample is None:
        token = verification.large_tokens[kept]
    else:
        token = g.sampler.pick(verification.large_logits[kept],
                               verification.large_probs[kept] if resample is None else resample)
    del g.seq[len(g.seq) - (n - kept):]
    g.seq.append(token)
    for decoder in g.decoders.values():
        decoder.rewind(len(g.seq) - 1)
    outcome = Outcome(n, kept, reason)
    g.history.record(outcome)
    g.policy.after_verification(g.state, verification, outcome)
    for observer in g.observers:
        observer.after_verification(verification, outcome)
    return g.stop_check(checked)


@torch.inference_mode()
def generate(pair: ModelPair, prompt: Prompt, policy: Policy | str, config: GenerationConfig | dict | None = None,
             *, state: Any = None, observers: Sequence[Observer] = ()) -> GenerationResult:
    """Decode one prompt with the small model drafting and the large model called per `policy`.

    `state`: the policy's state (default: a fresh `policy.new_state()`); pass the same object to
    successive calls to let a policy learn across prompts.
    """
    policy, config = as_policy(policy), as_config(config)
    state = policy.new_state() if state is None else state
    g = Generation(pair, prompt, config, ("small", "large"), policy, state, observers)
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
