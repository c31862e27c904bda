"""What a caller gives the engine, checked before decoding, and what a policy returns, checked at the seam.

Every check turns a mistake into one `BildError` line that names what is wrong (a batch where
one prompt goes, a token outside the vocabulary, a prompt longer than the context, a policy hook
that raised or returned the wrong type, naming the policy class and the hook).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from bild.config import GenerationConfig
from bild.errors import BildError, describe_errors
from bild.pair import ModelPair
from bild.policy import Policy, Verdict
from bild.registry import make_policy

Prompt = str | Sequence[int] | torch.Tensor


def as_config(config: GenerationConfig | dict | None) -> GenerationConfig:
    if config is None or isinstance(config, GenerationConfig):
        return config or GenerationConfig()
    if isinstance(config, dict):
        try:
            return GenerationConfig(**config)
        except ValidationError as e:
            raise BildError(f"invalid generation config: {describe_errors(e, GenerationConfig, got=True)}") from None
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
        for name in ("small", "large"):
            ctx = pair.context_length(pair.model(name))
            if ctx is not None and len(ids) + max_new_tokens > ctx:
                raise BildError(f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones are asked for, "
                                f"but the {name} model's context is {ctx} tokens: shorten the prompt or "
                                "lower max_new_tokens")
    return ids


def hook(policy: Policy, name: str, call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, a hook of `policy`; an exception in it names the policy class and the hook, once."""
    try:
        return call(*args)
    except BildError:
        raise
    except Exception as e:
        raise BildError(f"policy {type(policy).__name__}.{name} raised {type(e).__name__}: {e}") from e


def checked_decision(policy: Policy, name: str, call: Callable[..., Any], *args: Any) -> bool:
    """A yes/no decision of `policy` (`fallback`, `stop_drafting`), refused unless it is a bool."""
    decision = hook(policy, name, call, *args)
    if not isinstance(decision, bool) and type(decision).__name__ != "bool_":  # numpy's bool too
        raise BildError(f"policy {type(policy).__name__}.{name} returned {decision!r} "
                        f"({type(decision).__name__}); it must return True or False")
    return bool(decision)


def checked_proposal(source: Any, proposal: Any, room: int, vocab: int) -> None:
    """A draft source's proposal: a list of token ids in the vocabulary, no longer than asked."""
    name = type(source).__name__
    tokens = getattr(proposal, "tokens", None)
    if not isinstance(tokens, list) or not all(_index(t) is not None and not isinstance(t, bool) for t in tokens):
        raise BildError(f"draft source {name} returned {proposal!r}: a Proposal's tokens must be a list of token ids")
    if len(tokens) > room:
        raise BildError(f"draft source {name} proposed {len(tokens)} tokens where {room} were asked for at most")
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise BildError(f"draft source {name} proposed token {bad}, outside the vocabulary of {vocab} tokens")


def checked_take(policy: Policy, decision: Any, proposed: int) -> int:
    """How many proposed tokens a policy's `lookup` takes: a whole number in 0..proposed."""
    take = None if isinstance(decision, bool) else _index(decision)
    if take is None or not 0 <= take <= proposed:
        raise BildError(f"policy {type(policy).__name__}.lookup returned {decision!r} ({type(decision).__name__}); "
                        f"it must return a whole number in 0..{proposed} (the proposed tokens to draft)")
    return take


def _index(value: Any) -> int | None:
    """A whole number of any integral type (int, numpy's int64, ...) as an int; None for anything else."""
    try:
        return operator.index(value)
    except TypeError:
        return None


def checked_rollback(policy: Policy, decision: Any, n: int, vocab: int) -> Verdict:
    where = f"policy {type(policy).__name__}.rollback"
    kept, correction = decision if isinstance(decision, Verdict) else (decision, None)
    whole = None if isinstance(kept, (bool, torch.Tensor)) or type(kept).__name__ == "bool_" else _index(kept)
    if whole is None or not 0 <= whole <= n:
        raise BildError(f"{where} returned {kept!r} ({type(kept).__name__}); it must return a whole number "
                        f"in 0..{n} (the drafts kept) or a Verdict")
    kept = whole
    if correction is not None and (
            not isinstance(correction, torch.Tensor) or correction.shape != (vocab,)
            or not bool(torch.isfinite(correction).all()) or bool((correction < 0).any())
            or not float(correction.sum()) > 0):
        raise BildError(f"{where} returned a Verdict whose correction is not a distribution over the "
                        f"{vocab} tokens (a 1-D tensor, finite, non-negative, summing above 0)")
    return Verdict(kept, correction)
