"""Methods: what a bench or study runs on each prompt, and the function that runs one.

A `Method` is a baseline or a policy with parameters:

    large, small      this engine with one model (same fast path as the policies)
    large-hf          transformers' `generate`
    large-hf-static   `generate` with a static cache (compiled on CUDA): transformers' fastest single-model path
    hf-assisted       transformers' assisted generation with its default settings (its passes counted from
                      outside, bild/lab/hfcount.py: τ, acceptance and a modelled speedup like a policy's)
    hf-pld            transformers' prompt lookup (`prompt_lookup_num_tokens=10`), no small model, counted alike
    POLICY[@k=v...]   a registered policy, e.g. bild@fallback_threshold=0.3@rollback_threshold=3

`method_runner` turns a method into a function from prompt ids to an answer (a policy's state
created once, living as long as the function); `converse` answers every turn of a conversation
with it. Timing is bild/lab/measure.py's; what the measurements add up to, bild/lab/summary.py's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from bild.checks import hook
from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.engine import generate, generate_single
from bild.errors import BildError, describe_errors, unknown_name
from bild.lab.chat import TURN_BREAK, Conversation
from bild.lab.hfcount import assisted_stats, counted
from bild.lab.identity import policy_origin
from bild.lab.options import BASELINES, parse_pairs
from bild.pair import ModelPair
from bild.policy import Policy
from bild.stats import GenerationStats
from bild.stopping import trim_text

log = logging.getLogger("bild")
HF_PLD_TOKENS = 10  # hf-pld's prompt_lookup_num_tokens (transformers' documented example)


class Method(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    policy: Policy | None = None
    generation: dict[str, Any] = {}  # settings of this method that differ from the bench's (e.g. fast_path)

    @property
    def baseline(self) -> str:
        return self.name.split("@")[0]

    @property
    def origin(self) -> dict[str, Any] | None:
        """Where the method's policy comes from (None for a baseline)."""
        return None if self.policy is None else origin_of(type(self.policy))

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the method's drafts come from: the small model and/or its policy's draft source (none for a
        baseline); the oracle of these is the method's own limit."""
        if self.policy is None:
            return ("lookup",) if self.baseline == "hf-pld" else ()
        found = ("small",) if type(self.policy).uses_small else ()
        source = self.policy.draft_source()
        return found + ((source.name,) if source is not None else ())

    def config(self, config: GenerationConfig) -> GenerationConfig:
        return config.model_validate({**config.model_dump(), **self.generation}) if self.generation else config


@functools.cache
def origin_of(cls: type[Policy]) -> dict[str, Any]:
    """`policy_origin`, looked up once per class; an unknown one is said once."""
    found = policy_origin(cls)
    if found["source"] == "unknown":
        log.warning("bild: where policy %s comes from cannot be found (no entry point, no source file): its results "
                    "record origin 'unknown'", cls.__name__)
    return found


def parse_methods(text: str, params: dict[str, Any] | None = None) -> list[Method]:
    """`"large,exact,bild@fallback_threshold=0.3"` -> methods; `params` apply to every policy having them.

    An override naming a generation setting applies to that method only: `large@fast_path=off`.
    """
    from policies import list_policies, make_policy, policy_class

    params = params or {}
    methods = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        base, *rest = item.split("@")
        overrides = parse_pairs(rest, f"method {item!r}: override")
        generation = {k: v for k, v in overrides.items() if k in GenerationConfig.model_fields}
        try:
            GenerationConfig.model_validate({**GenerationConfig().model_dump(), **generation})
        except ValidationError as e:
            raise BildError(f"method {item!r}: {describe_errors(e, GenerationConfig, got=True)}") from None
        own = {k: v for k, v in overrides.items() if k not in generation}
        if base in BASELINES:
            if own:
                raise BildError(f"method {item!r}: baselines take no policy parameters, only generation settings "
                                "such as fast_path")
            methods.append(Method(name=item, generation=generation))
            continue
        try:
            cls = policy_class(base)
        except BildError:
            raise unknown_name("method", base, [*BASELINES, *list_policies()]) from None
        shared = {k: v for k, v in params.items() if k in cls.model_fields}
        methods.append(Method(name=item, policy=make_policy(base, {**shared, **own}), generation=generation))
    if not methods:
        raise BildError("no methods given: e.g. --methods large,large-hf,exact,bild")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise BildError(f"a method is listed twice in {text!r}")
    unused = set(params) - {k for m in methods if m.policy for k in type(m.policy).model_fields}
    if unused:
        raise BildError(f"--param {', '.join(sorted(unused))}: no listed policy has such a parameter")
    return methods


class Answer(NamedTuple):
    """A method's answer to one prompt (one turn)."""

    tokens: list[int]
    text: str
    stats: GenerationStats | None  # None for transformers' own methods, counted for its assisted generation
    rounds: list[list[int]] | None = None  # a policy's rounds (bild.schedule.Round as lists), for the oracle's gap


class Output(NamedTuple):
    """A method's answers to every turn of an example, joined: tokens and statistics added up."""

    tokens: list[int]
    text: str
    stats: GenerationStats | None
    rounds: list[list[list[int]]] | None  # per turn
    prompts: list[list[int]]  # the prompt ids of each turn
    turns: list[int]  # new tokens of each turn
    answers: list[str]  # the text of each turn's answer


Run = Callable[[list[int]], Answer]


def hf_generate(pair: ModelPair, ids: list[int], config: GenerationConfig, method: str) -> list[int]:
    """transformers' own decoding (greedy or sampled; assisted or with a static cache): new token ids."""
    inputs = torch.tensor([ids], device=pair.device)  # [1, T]
    kwargs: dict[str, Any] = {}
    if method == "hf-assisted":
        kwargs["assistant_model"] = pair.small
    if method == "hf-pld":  # transformers' prompt lookup, its documented setting
        kwargs["prompt_lookup_num_tokens"] = HF_PLD_TOKENS
    if method == "large-hf-static":
        kwargs["cache_implementation"] = "static"
    if config.stop_strings:
        kwargs |= {"stop_strings": config.stop_strings, "tokenizer": pair.tokenizer}
    if not config.greedy:
        kwargs |= {"temperature": config.temperature, "top_k": config.top_k or 0, "top_p": config.top_p or 1.0}
    out = pair.large.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=not config.greedy,
                              num_beams=1, max_new_tokens=config.max_new_tokens, pad_token_id=pair.pad_id, **kwargs)
    return out[0, 1 if pair.encoder_decoder else len(ids):].tolist()


def hf_text(pair: ModelPair, tokens: list[int], config: GenerationConfig) -> str:
    return trim_text(pair.tokenizer.decode(tokens, skip_special_tokens=True), config.stop_strings)


def method_runner(pair: ModelPair, method: Method, config: GenerationConfig, costs: CostModel | None = None) -> Run:
    """A function prompt ids -> output; a policy's state lives as long as the function. `costs`: what the
    policy reads as `step.costs`."""
    config = method.config(config)
    if method.policy is not None:
        policy = method.policy
        state = hook(policy, "new_state", policy.new_state)  # a policy's own error names it, here as in generate

        def run(ids: list[int]) -> Answer:
            r = generate(pair, ids, policy, config, state=state, costs=costs)
            return Answer(r.token_ids, r.text, r.stats, [list(x) for x in r.rounds])
    elif method.baseline in ("large", "small"):
        def run(ids: list[int]) -> Answer:
            r = generate_single(pair, ids, method.baseline, config)
            return Answer(r.token_ids, r.text, r.stats)
    elif method.baseline in ("hf-assisted", "hf-pld"):
        def run(ids: list[int]) -> Answer:
            with torch.inference_mode(), counted(pair) as (small, large):
                tokens = hf_generate(pair, ids, config, method.baseline)
            stats = assisted_stats(small, large, 1 if pair.encoder_decoder else len(ids), len(tokens))
            if method.baseline == "hf-pld":  # every draft came from lookup
                stats.lookup_drafts, stats.lookup_accepted = stats.draft_tokens, stats.accepted_draft_tokens
            return Answer(tokens, hf_text(pair, tokens, config), stats)
    else:
        def run(ids: list[int]) -> Answer:
            with torch.inference_mode():
                tokens = hf_generate(pair, ids, config, method.baseline)
            return Answer(tokens, hf_text(pair, tokens, config), None)
    return run


def converse(run: Run, conversation: Conversation) -> Output:
    """Every turn of a conversation answered by `run`, each turn's prompt holding the method's own earlier answers."""
    answers: list[Answer] = []
    prompts = []
    for _ in range(conversation.turns):
        prompts.append(conversation.prompt_ids([a.text for a in answers]))
        answers.append(run(prompts[-1]))
    stats = total_stats([a.stats for a in answers]) if answers[0].stats is not None else None
    rounds = [a.rounds for a in answers] if answers[0].rounds is not None else None
    return Output([t for a in answers for t in a.tokens], TURN_BREAK.join(a.text for a in answers), stats, rounds,
                  prompts, [len(a.tokens) for a in answers], [a.text for a in answers])


def total_stats(stats: list[GenerationStats]) -> GenerationStats:
    """The sum of many generations' statistics."""
    return sum(stats[1:], stats[0]) if stats else GenerationStats()
