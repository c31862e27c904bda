"""The BiLD decoding loop (greedy, batch size 1) and the single-model baseline.

    draft:   the small model predicts the next token; unless the policy falls back (or the cap
             on consecutive drafts is hit, or the draft is EOS) the token is appended as pending
             and the small model continues.
    verify:  the large model runs ONCE over every position it has not seen (its last token and
             all pending drafts), the policy's rollback says how many drafts survive, and the
             large model's own token is appended after them. Both caches are rewound to the
             surviving prefix; the next `catch_up` resynchronises each model in one pass.

Unlike the authors' code, the first token comes from the small model too (the large model's
first call prefills the prompt together with the first drafts), so a policy that never falls
back is exactly small-only greedy decoding.

Batch size 1 only (the paper's setting): speculative acceptance lengths differ per sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from bild.config import GenerationConfig
from bild.decoder import Decoder
from bild.errors import BildError
from bild.pair import ModelPair
from bild.policy import DraftStep, Policy, Verdict, Verification
from bild.sampling import Sampler
from bild.stats import GenerationResult, GenerationStats
from bild.stopping import Stopper

# --- prompt ----------------------------------------------------------------------------------


def context_length(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config.get_text_config(decoder=True), attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_prompt(pair: ModelPair, prompt: str | Sequence[int] | torch.Tensor, max_new_tokens: int) -> list[int]:
    """Prompt token ids, after checking that this is one non-empty prompt that fits the context."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise BildError(f"batch size {prompt.shape[0]} asked for, but BiLD decodes one prompt at a "
                            "time (batch size 1, as in the paper): loop over the prompts")
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, (list, tuple)) and prompt and not all(isinstance(t, int) for t in prompt):
        raise BildError(f"{len(prompt)} prompts given, but BiLD decodes one prompt at a time "
                        "(batch size 1, as in the paper): loop over the prompts")
    ids = pair.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
    if not ids or (isinstance(prompt, str) and not prompt):
        raise BildError("the prompt is empty: give at least one token of text")
    if max(ids) >= pair.vocab_size or min(ids) < 0:
        raise BildError(f"prompt token id {max(ids)} is outside the vocabulary (0..{pair.vocab_size - 1})")
    if not pair.encoder_decoder:
        for name, model in (("small", pair.small), ("large", pair.large)):
            ctx = context_length(model.config)
            if ctx is not None and len(ids) + max_new_tokens > ctx:
                raise BildError(f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones are asked for, "
                                f"but the {name} model's context is {ctx} tokens: shorten the prompt or "
                                "lower max_new_tokens")
    return ids


def eos_ids(pair: ModelPair) -> set[int]:
    eos = pair.large.generation_config.eos_token_id
    if eos is None:
        eos = pair.tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def start(pair: ModelPair, prompt_ids: list[int], *models: PreTrainedModel) -> tuple[list[int], list[Decoder]]:
    """The initial decoder sequence and a fresh `Decoder` per model (encoders run here, once)."""
    if pair.encoder_decoder:
        seq = [pair.large.config.decoder_start_token_id]
        return seq, [Decoder(m, pair.vocab_size, prompt_ids) for m in models]
    return list(prompt_ids), [Decoder(m, pair.vocab_size) for m in models]


def finish(pair: ModelPair, new: list[int], prompt_ids: list[int], stopper: Stopper,
           stats: GenerationStats, started: float) -> GenerationResult:
    stats.new_tokens = len(new)
    stats.wall_seconds = time.perf_counter() - started
    text = stopper.trim_text(pair.tokenizer.decode(new, skip_special_tokens=True))
    return GenerationResult(text=text, token_ids=new, prompt_tokens=len(prompt_ids),
                            stop_reason=stopper.reason, stats=stats)


# --- BiLD ------------------------------------------------------------------------------------


@torch.inference_mode()
def generate(
    pair: ModelPair, prompt: str | Sequence[int] | torch.Tensor, policy: Policy,
    config: GenerationConfig | None = None,
) -> GenerationResult:
    """Decode one prompt with the small model drafting and the large model called per `policy`."""
    config = config or GenerationConfig()
    started = time.perf_counter()
    prompt_ids = encode_prompt(pair, prompt, config.max_new_tokens)
    seq, (small, large) = start(pair, prompt_ids, pair.small, pair.large)
    begin = len(seq)  # seq[begin:] are new tokens, the last `len(steps)` of them pending
    stopper = Stopper(pair.tokenizer, eos_ids(pair), config.max_new_tokens, config.stop_strings)
    sampler = Sampler(config, pair.device)
    cap = config.max_draft_tokens or config.max_new_tokens
    stats = GenerationStats()
    steps: list[DraftStep] = []  # the pending drafts

    while True:
        # draft: the small model proposes until the policy falls back or a limit is hit
        if len(steps) < cap and len(seq) - begin < config.max_new_tokens:
            t = time.perf_counter()
            step = DraftStep(small.catch_up(seq, 1)[0], len(steps), len(seq) - begin, sampler)
            fallback = policy.fallback(step)
            token = -1 if fallback else step.token
            stats.small_seconds += time.perf_counter() - t
            if fallback:
                stats.fallbacks += 1
            else:
                seq.append(token)
                steps.append(step)
                if token not in stopper.eos_ids:
                    continue
        elif len(steps) == cap:
            stats.forced_verifications += 1

        # verify: one large-model pass over all unseen positions, then the rollback decision
        t = time.perf_counter()
        n = len(steps)
        verification = Verification(steps, large.catch_up(seq, n + 1), len(seq) - begin - n, sampler)
        decision = policy.rollback(verification) if n else 0
        kept, resample = decision if isinstance(decision, Verdict) else (decision, None)
        if not 0 <= kept <= n:
            raise BildError(f"policy {type(policy).__name__}.rollback returned {kept}; it must be in 0..{n}")
        if sampler.greedy:
            correction = verification.large_tokens[kept]
        else:
            correction = sampler.pick(verification.large_logits[kept],
                                      verification.large_probs[kept] if resample is None else resample)
        stats.large_seconds += time.perf_counter() - t
        stats.draft_tokens += n
        stats.accepted_draft_tokens += kept
        if kept < n:
            stats.rollbacks += 1
            stats.rolled_back_tokens += n - kept
            del seq[len(seq) - (n - kept):]
        checked = len(seq) - begin - kept
        seq.append(correction)
        steps = []
        large.rewind(len(seq) - 1)
        small.rewind(len(seq) - 1)
        cut = stopper.cut(seq, begin, checked)
        if cut is not None:
            break

    new = seq[begin: begin + cut]
    stats.small_calls, stats.large_calls = small.calls, large.calls
    stats.small_positions, stats.large_positions = small.positions, large.positions
    return finish(pair, new, prompt_ids, stopper, stats, started)


# --- one model alone ---------------------------------------------------------------------------


@torch.inference_mode()
def generate_single(
    pair: ModelPair, prompt: str | Sequence[int] | torch.Tensor, which: str = "large",
    config: GenerationConfig | None = None,
) -> GenerationResult:
    """One model of the pair alone (greedy or sampled): the `large` and `small` baselines."""
    if which not in ("small", "large"):
        raise BildError(f"unknown model {which!r}: use 'small' or 'large'")
    config = config or GenerationConfig()
    started = time.perf_counter()
    prompt_ids = encode_prompt(pair, prompt, config.max_new_tokens)
    seq, (decoder,) = start(pair, prompt_ids, getattr(pair, which))
    begin = len(seq)
    stopper = Stopper(pair.tokenizer, eos_ids(pair), config.max_new_tokens, config.stop_strings)
    sampler = Sampler(config, pair.device)
    while True:
        seq.append(sampler.pick(decoder.catch_up(seq, 1)[0]))
        cut = stopper.cut(seq, begin, len(seq) - begin - 1)
        if cut is not None:
            break
    stats = GenerationStats()
    seconds = time.perf_counter() - started
    if which == "small":
        stats.small_calls, stats.small_positions, stats.small_seconds = decoder.calls, decoder.positions, seconds
    else:
        stats.large_calls, stats.large_positions, stats.large_seconds = decoder.calls, decoder.positions, seconds
    return finish(pair, seq[begin: begin + cut], prompt_ids, stopper, stats, started)
