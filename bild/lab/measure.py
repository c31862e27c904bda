"""Timing methods on a prompt set: the one measuring layer `bench` and `tune` share.

A `Method` is a baseline or a policy with parameters:

    large, small      this engine with one model (same fast path as the policies)
    large-hf          transformers' `generate`
    large-hf-static   `generate` with a static cache (compiled on CUDA): transformers' fastest single-model path
    hf-assisted       transformers' assisted generation with its default settings (its passes counted from
                      outside, bild/lab/hfcount.py: τ, acceptance and a modelled speedup like a policy's)
    hf-pld            transformers' prompt lookup (`prompt_lookup_num_tokens=10`), no small model, counted alike
    POLICY[@k=v...]   a registered policy, e.g. bild@fallback_threshold=0.3@rollback_threshold=3

Honest timing: every method is warmed up once on the longest prompt (allocations, lazy imports,
static caches and graphs sized and captured for the whole set); for each prompt the methods run
in a rotated order (no method always runs first or last), `repeats` times, keeping the median
wall time (CUDA synchronised). A policy's state is created once per method (`Policy.new_state`),
so a policy that learns does so across prompts, as in use. Each output is decoded once.

Anchors: each method is compared (speed, exact match, agreement) with the `large` baseline that
ran on the same fast path as its own large model (`exact@fast_path=graph` against
`large@fast_path=graph`), read from the statistics of what actually ran; transformers' own
methods, with the first `large` benched. Token identity is a float32 claim: in reduced precision a
multi-token pass may round differently, so a report gives agreement and where outputs first part.
"""

from __future__ import annotations

import functools
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bild.checks import hook
from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.engine import generate, generate_single
from bild.errors import BildError, describe_errors, unknown_name
from bild.lab.chat import TURN_BREAK, ChatMode, Conversation, conversations
from bild.lab.hfcount import FAST_PATH as TRANSFORMERS
from bild.lab.hfcount import assisted_stats, counted
from bild.lab.identity import policy_origin
from bild.lab.load import BUSY, LoadMeter
from bild.lab.metrics import accuracy, exact_match, first_difference, reference_metrics, token_agreement
from bild.lab.options import BASELINES, parse_pairs
from bild.lab.oracle import ends_in_loop
from bild.lab.tasks import TOTAL, Example
from bild.pair import ModelPair
from bild.policy import Policy
from bild.stats import GenerationStats, ModelStats
from bild.stopping import trim_text

log = logging.getLogger("bild")
HF_PLD_TOKENS = 10  # hf-pld's prompt_lookup_num_tokens (transformers' documented example)

# --- methods ---------------------------------------------------------------------------------------


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


# --- measuring -------------------------------------------------------------------------------------


class Measurement(BaseModel):
    """One method on one prompt: the median time of its repeats and its (deterministic) output."""

    id: str
    method: str
    seconds: float
    tokens: list[int]
    text: str
    stats: GenerationStats | None = None
    rounds: list[list[list[int]]] | None = None  # a policy's rounds per turn, [drafted, kept, discarded]
    turns: list[int] = []  # new tokens per turn (one turn unless the example is a multi-turn conversation)
    answers: list[str] = []  # each turn's answer (what the next turn's prompt holds: Conversation.turn_prompts)
    peak_gpu_mib: float | None = None  # GPU memory at its peak during these runs (CUDA only)
    teacher: list[dict[str, Any]] | None = None  # the oracle's anchor: the small model teacher-forced, per turn
    tests: str | None = None  # what the example's tests said of the output (--execute-code): passed, failed, ...
    others_cpu: float | None = None  # the share of the machine's CPU other processes took meanwhile (load.py)
    prompts: list[list[int]] | None = Field(None, exclude=True)  # each turn's prompt ids, while the bench runs


def timed(run: Run, conversation: Conversation) -> tuple[float, Output]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = converse(run, conversation)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure_prompt(run: Run, example_id: str, method: str, conversation: Conversation, repeats: int) -> Measurement:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, out = [], None
    meter = LoadMeter()
    for _ in range(repeats):
        seconds, out = timed(run, conversation)
        times.append(seconds)
    return Measurement(id=example_id, method=method, seconds=statistics.median(times), tokens=out.tokens,
                       text=out.text, stats=out.stats, rounds=out.rounds, turns=out.turns, prompts=out.prompts,
                       answers=out.answers,
                       peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                       others_cpu=meter.read()["others_cpu"])


Results = dict[str, list[Measurement]]  # method name -> one measurement per prompt, in prompt order


def measure(pair: ModelPair, examples: list[Example], methods: list[Method], config: GenerationConfig,
            repeats: int = 1, done: Results | None = None,
            on_prompt: Callable[[int, Results], None] | None = None, progress: bool = True,
            costs: CostModel | None = None, chat: ChatMode = "auto", system: str | None = None) -> Results:
    """Every method on every example after those in `done`; `on_prompt(i, results so far)` after each prompt.
    `costs`: the cost model policies read; `chat`, `system`: how examples become prompts (bild/lab/chat.py)."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise BildError(f"--repeats must be at least 1, got {repeats}")
    if not examples:
        raise BildError("no prompts to measure: give at least one")
    results: Results = {m.name: list((done or {}).get(m.name, [])) for m in methods}
    start = min(len(r) for r in results.values())
    talks = conversations(pair, examples, chat, system, config.max_new_tokens)
    firsts = [c.first for c in talks]
    runs = {m.name: method_runner(pair, m, config, costs) for m in methods}
    if start < len(examples):
        longest = max(range(start, len(examples)), key=lambda i: len(firsts[i]))
        for run in runs.values():  # warm-up: allocations, kernels, lazy imports, caches sized for the set
            run(firsts[longest])
    bar = tqdm(total=(len(examples) - start) * len(methods), desc="measuring", unit="run", disable=not progress,
               file=sys.stderr)
    try:
        for i in range(start, len(examples)):
            for m in methods[i % len(methods):] + methods[: i % len(methods)]:
                results[m.name].append(measure_prompt(runs[m.name], examples[i].id, m.name, talks[i],
                                                      repeats))
                bar.update()
            if on_prompt is not None:
                on_prompt(i, results)
    finally:
        bar.close()
    return results


# --- summaries -------------------------------------------------------------------------------------


def tokens_per_second(measurements: list[Measurement]) -> float:
    return sum(len(m.tokens) for m in measurements) / max(sum(m.seconds for m in measurements), 1e-9)


def speedup(found: list[Measurement], base: list[Measurement], costs: CostModel | None = None) -> float:
    """Tokens per unit of time of `found` over `base` (the same prompts): modelled by `costs` when given,
    else measured on the clock."""
    if costs is not None:
        found, base = ([m.model_copy(update={"seconds": costs.seconds(m.stats)}) for m in ms] for ms in (found, base))
    return tokens_per_second(found) / tokens_per_second(base)


def total_stats(stats: list[GenerationStats]) -> GenerationStats:
    """The sum of many generations' statistics."""
    return sum(stats[1:], stats[0]) if stats else GenerationStats()


def policy_stats(stats: list[GenerationStats]) -> dict[str, Any]:
    total = total_stats(stats)
    return total.model_dump(exclude={"tokens_per_second"}) | {
        "fallback_rate": total.fallbacks / total.small.calls if total.small.calls else None,
        "rollback_rate": total.rollbacks / total.large.calls if total.large.calls else None,
        "overhead_ms_per_token": 1000 * (total.wall_seconds - total.small.seconds - total.large.seconds)
        / total.new_tokens if total.new_tokens and total.wall_seconds else None,  # counted from outside: untimed
    }


def quality(measurements: list[Measurement], examples: list[Example], anchor: list[Measurement] | None
            ) -> dict[str, Any]:
    """Reference metrics, and agreement with the anchor (the large model's output) on the prompts done."""
    refs = [e.reference for e in examples[: len(measurements)]]
    q: dict[str, Any] = reference_metrics([m.text for m in measurements], refs)
    answers = [e.answer for e in examples[: len(measurements)]]
    q["accuracy"] = accuracy([m.text for m in measurements], answers) if answers and None not in answers else None
    tested = [m.tests for m in measurements if m.tests is not None]
    q["pass_at_1"] = sum(t == "passed" for t in tested) / len(tested) if tested else None
    tokens, base = [m.tokens for m in measurements], [m.tokens for m in anchor or []][: len(measurements)]
    q["agreement"] = token_agreement(tokens, base) if anchor else None
    q["exact_match"] = exact_match(tokens, base) if anchor else None
    q["first_difference"] = first_difference(tokens, base) if anchor else None
    return q


def ran_on(measurements: list[Measurement]) -> ModelStats | None:
    """The statistics of the model whose path anchors a method: the large model's, or the small one's when
    it ran alone; None for transformers' own methods (counted or not)."""
    stats = measurements[0].stats if measurements else None
    if stats is None or stats.large.fast_path == TRANSFORMERS:
        return None
    return stats.large if stats.large.fast_path else stats.small


def anchors(methods: list[Method], results: Results) -> dict[str, str | None]:
    """Each method's anchor: the first `large` benched on the fast path its large model ran on (engine
    methods), the first `large` benched (transformers' methods), None when there is none."""
    larges: dict[str | None, str] = {}
    for m in methods:
        model = ran_on(results[m.name])
        if m.baseline == "large" and model is not None:
            larges.setdefault(model.fast_path, m.name)
    first = next(iter(larges.values()), None)
    found = {}
    for m in methods:
        model = ran_on(results[m.name])
        found[m.name] = first if model is None else larges.get(model.fast_path)
    return found


def priced_by(costs: CostModel | None, measurements: list[Measurement]) -> bool:
    """Whether `costs` prices these measurements: they ran on the fast path it was calibrated on (a cost model
    that names none prices every path). transformers' counted passes are priced as `off`'s, which runs the
    same forward passes on the same dynamic cache: what its schedule would cost in this engine."""
    stats = measurements[0].stats if measurements else None
    if stats is not None and stats.large.fast_path == TRANSFORMERS:
        path = "off"
    else:
        path = model.fast_path if (model := ran_on(measurements)) else None
    return costs is not None and path is not None and costs.identity.get("fast_path") in (None, path)


def fast_path_summary(measurements: list[Measurement]) -> dict[str, str] | None:
    """What each model of a method ran on, e.g. {"small": "graph (2/2 captured)", "large": "graph (11/11 captured)"}."""
    stats = total_stats([m.stats for m in measurements if m.stats is not None]) if measurements else None
    if stats is None or not measurements[0].stats:
        return None
    found = {}
    for which, model in (("small", stats.small), ("large", stats.large)):
        if model.fast_path:
            graphs = f" ({model.graphs_captured}/{model.graph_buckets} captured)" if model.graph_buckets else ""
            found[which] = model.fast_path + graphs
    return found


def machine_load(measurements: list[Measurement]) -> dict[str, Any] | None:
    """The share of the CPU other processes took while a method ran (weighted by time), and whether that is busy."""
    timed = [(m.others_cpu, m.seconds) for m in measurements if m.others_cpu is not None]
    if not timed:
        return None
    share = sum(o * s for o, s in timed) / max(sum(s for _, s in timed), 1e-12)
    return {"others_cpu": round(share, 3), "busy": share > BUSY, "worst": max(o for o, _ in timed)}


def model_fit(modelled: float | None, measured: float | None, tolerance: float) -> dict[str, Any] | None:
    """How far a modelled speedup is from the measured one: their ratio, and whether it is beyond `tolerance`."""
    if modelled is None or measured is None or measured <= 0:
        return None
    ratio = modelled / measured
    return {"ratio": round(ratio, 4), "flagged": abs(ratio - 1) > tolerance, "tolerance": tolerance}


def summarize(methods: list[Method], results: Results, examples: list[Example],
              costs: CostModel | None = None, tolerance: float = 0.15) -> dict[str, dict[str, Any]]:
    """One row per method: speed, speedups over its anchor (measured, and modelled by `costs` for the methods
    that ran on its fast path) and over `large-hf`, how far the two agree (`model_fit`, flagged beyond
    `tolerance`), quality, the machine's load while it ran, the fast paths that ran, engine statistics."""
    tps = {m.name: tokens_per_second(results[m.name]) for m in methods}
    anchor = anchors(methods, results)
    rows = {}
    for m in methods:
        done, base = results[m.name], anchor[m.name]
        q = quality(done, examples, results[base] if base else None)
        rows[m.name] = {
            "tokens_per_s": tps[m.name], "new_tokens": sum(len(x.tokens) for x in done),
            "seconds": sum(x.seconds for x in done), "anchor": base,
            "speedup_vs_large": tps[m.name] / tps[base] if base else None,
            "speedup_vs_large_hf": tps[m.name] / tps["large-hf"] if "large-hf" in tps else None,
            "modelled_speedup_vs_large": speedup(done, results[base][: len(done)], costs)
            if base and priced_by(costs, done) and priced_by(costs, results[base]) else None,
            "chrf": q["chrf"], "bleu": q["bleu"], "rouge_l": q["rouge_l"], "accuracy": q["accuracy"],
            "pass_at_1": q["pass_at_1"],
            "agreement_with_large": q["agreement"], "exact_match_with_large": q["exact_match"],
            "first_difference": q["first_difference"],
            "params": m.policy.params() if m.policy else None, "origin": m.origin,
            "generation": m.generation or None,
            "fast_paths": fast_path_summary(done),
            "peak_gpu_mib": max((x.peak_gpu_mib for x in done if x.peak_gpu_mib is not None), default=None),
            "load": machine_load(done),
            "stats": policy_stats([x.stats for x in done]) if done and done[0].stats is not None else None,
        }
    for row in rows.values():
        row["model_fit"] = model_fit(row["modelled_speedup_vs_large"], row["speedup_vs_large"], tolerance)
    return rows


def group_rows(methods: list[Method], results: Results, index: list[int], anchor: dict[str, str | None],
               costs: CostModel | None = None) -> dict[str, dict[str, Any]]:
    """Each method's speed, speedup over its anchor (measured, and modelled where `costs` prices it), tau,
    acceptance and large calls per token on the prompts of `index`."""
    rows = {}
    for m in methods:
        mine = [results[m.name][i] for i in index]
        base = [results[anchor[m.name]][i] for i in index] if anchor[m.name] else None
        stats = total_stats([x.stats for x in mine]) if mine[0].stats is not None else None
        priced = base is not None and priced_by(costs, mine) and priced_by(costs, base)
        rows[m.name] = {"prompts": len(index), "tokens_per_s": tokens_per_second(mine),
                        "speedup_vs_large": speedup(mine, base) if base else None,
                        "modelled_speedup_vs_large": speedup(mine, base, costs) if priced else None,
                        "mean_accepted_tokens": stats.mean_accepted_tokens if stats else None,
                        "acceptance_rate": stats.acceptance_rate if stats else None,
                        "large_calls_per_token": stats.large_calls_per_token if stats else None}
    return rows


def by_category(methods: list[Method], results: Results, examples: list[Example], anchor: dict[str, str | None]
                ) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Per category of the examples (Spec-Bench's), then `overall`: `group_rows` on that category's prompts.
    None without categories."""
    done = min(len(r) for r in results.values())
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples[:done]):
        if e.category is not None:
            groups.setdefault(e.category, []).append(i)
    if not groups:
        return None
    groups[TOTAL] = list(range(done))
    return {category: group_rows(methods, results, index, anchor) for category, index in groups.items()}


def without_loops(methods: list[Method], results: Results, anchor: dict[str, str | None],
                  costs: CostModel | None) -> dict[str, Any] | None:
    """`group_rows` on the prompts whose large model's output does not end in a loop (oracle.ends_in_loop):
    a gain seen only on looping outputs is context lookup copying the loop. None without a `large` method."""
    reference = next((name for name in ("large", *anchor.values()) if name in results), None)
    if reference is None:
        return None
    done = min(len(r) for r in results.values())
    index = [i for i in range(done) if not ends_in_loop(results[reference][i].tokens)]
    rows = group_rows(methods, results, index, anchor, costs) if index else {}
    return {"reference": reference, "looping": done - len(index), "prompts": done, "methods": rows}


def peak_memory() -> dict[str, float]:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    mem = {"peak_rss_mib": kib / 1024}
    if torch.cuda.is_available():
        mem["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return mem
