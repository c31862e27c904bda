"""Timing methods on a prompt set: the one measuring layer `bench` and `tune` share.

A `Method` is a baseline or a policy with parameters:

    large, small      this engine with one model (same fast path as the policies)
    large-hf          transformers' `generate`
    large-hf-static   `generate` with a static cache (compiled on CUDA): transformers' fastest single-model path
    hf-assisted       transformers' assisted generation with its default settings
    POLICY[@k=v...]   a registered policy, e.g. bild@fallback_threshold=0.3@rollback_threshold=3

Honest timing: every method is warmed up once on the longest prompt (allocations, lazy imports,
static caches and graphs sized for the whole set); for each prompt the methods run in a rotated
order (no method always runs first or last), `repeats` times, keeping the median wall time
(CUDA synchronised). A policy's state is created once per method (`Policy.new_state`), so a
policy that learns does so across prompts, as in use. Each output is decoded once.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transformers
from pydantic import BaseModel, ConfigDict, ValidationError

from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.engine import encode_prompt, generate, generate_single
from bild.errors import BildError, unknown_name
from bild.forward import resolve_fast_path
from bild.lab.metrics import exact_match, reference_metrics, token_agreement
from bild.lab.options import BASELINES, DISTRIBUTION, parse_pairs
from bild.lab.tasks import Example
from bild.pair import ModelPair
from bild.policy import Policy
from bild.registry import describe_errors
from bild.stats import GenerationStats
from bild.stopping import trim_text

# --- methods ---------------------------------------------------------------------------------------


class Method(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    policy: Policy | None = None
    generation: dict[str, Any] = {}  # settings of this method that differ from the bench's (e.g. fast_path)

    @property
    def baseline(self) -> str:
        return self.name.split("@")[0]

    def config(self, config: GenerationConfig) -> GenerationConfig:
        return config.model_validate({**config.model_dump(), **self.generation}) if self.generation else config


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
            raise BildError(f"method {item!r}: {describe_errors(e, GenerationConfig)}") from None
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


class Output(NamedTuple):
    tokens: list[int]
    text: str
    stats: GenerationStats | None  # None for transformers' own methods


Run = Callable[[list[int]], Output]


def hf_generate(pair: ModelPair, ids: list[int], config: GenerationConfig, method: str) -> list[int]:
    """transformers' own decoding (greedy or sampled; assisted or with a static cache): new token ids."""
    inputs = torch.tensor([ids], device=pair.device)  # [1, T]
    kwargs: dict[str, Any] = {}
    if method == "hf-assisted":
        kwargs["assistant_model"] = pair.small
    if method == "large-hf-static":
        kwargs["cache_implementation"] = "static"
    if config.stop_strings:
        kwargs |= {"stop_strings": config.stop_strings, "tokenizer": pair.tokenizer}
    if not config.greedy:
        kwargs |= {"temperature": config.temperature, "top_k": config.top_k or 0, "top_p": config.top_p or 1.0}
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else pair.tokenizer.eos_token_id
    out = pair.large.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=not config.greedy,
                              num_beams=1, max_new_tokens=config.max_new_tokens, pad_token_id=pad, **kwargs)
    return out[0, 1 if pair.encoder_decoder else len(ids):].tolist()


def method_runner(pair: ModelPair, method: Method, config: GenerationConfig) -> Run:
    """A function prompt ids -> output; a policy's state lives as long as the function."""
    config = method.config(config)
    if method.policy is not None:
        policy, state = method.policy, method.policy.new_state()

        def run(ids: list[int]) -> Output:
            r = generate(pair, ids, policy, config, state=state)
            return Output(r.token_ids, r.text, r.stats)
    elif method.baseline in ("large", "small"):
        def run(ids: list[int]) -> Output:
            r = generate_single(pair, ids, method.baseline, config)
            return Output(r.token_ids, r.text, r.stats)
    else:
        def run(ids: list[int]) -> Output:
            with torch.inference_mode():
                tokens = hf_generate(pair, ids, config, method.baseline)
            return Output(tokens, trim_text(pair.tokenizer.decode(tokens, skip_special_tokens=True),
                                            config.stop_strings), None)
    return run


# --- measuring -------------------------------------------------------------------------------------


class Measurement(BaseModel):
    """One method on one prompt: the median time of its repeats and its (deterministic) output."""

    id: str
    method: str
    seconds: float
    tokens: list[int]
    text: str
    stats: GenerationStats | None = None
    peak_gpu_mib: float | None = None  # GPU memory at its peak during these runs (CUDA only)


def timed(run: Run, ids: list[int]) -> tuple[float, Output]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run(ids)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure_prompt(run: Run, example_id: str, method: str, ids: list[int], repeats: int) -> Measurement:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, out = [], None
    for _ in range(repeats):
        seconds, out = timed(run, ids)
        times.append(seconds)
    return Measurement(id=example_id, method=method, seconds=statistics.median(times), tokens=out.tokens,
                       text=out.text, stats=out.stats,
                       peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None)


Results = dict[str, list[Measurement]]  # method name -> one measurement per prompt, in prompt order


def measure(pair: ModelPair, examples: list[Example], methods: list[Method], config: GenerationConfig,
            repeats: int = 1, done: Results | None = None,
            on_prompt: Callable[[int, Results], None] | None = None, progress: bool = True) -> Results:
    """Every method on every example after those in `done`; `on_prompt(i, results so far)` after each prompt."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise BildError(f"--repeats must be at least 1, got {repeats}")
    if not examples:
        raise BildError("no prompts to measure: give at least one")
    results: Results = {m.name: list((done or {}).get(m.name, [])) for m in methods}
    start = min(len(r) for r in results.values())
    prompts = [encode_prompt(pair, e.prompt, config.max_new_tokens) for e in examples]
    runs = {m.name: method_runner(pair, m, config) for m in methods}
    if start < len(examples):
        longest = max(prompts[start:], key=len)
        for run in runs.values():  # warm-up: allocations, kernels, lazy imports, caches sized for the set
            run(longest)
    bar = tqdm(total=(len(examples) - start) * len(methods), desc="measuring", unit="run", disable=not progress,
               file=sys.stderr)
    try:
        for i in range(start, len(examples)):
            for m in methods[i % len(methods):] + methods[: i % len(methods)]:
                results[m.name].append(measure_prompt(runs[m.name], examples[i].id, m.name, prompts[i], repeats))
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
    """The sum of many generations' statistics (histograms added key by key)."""
    total = GenerationStats()
    for s in stats:
        for key, value in s:
            if isinstance(value, dict):
                merged = dict(getattr(total, key))
                for n, c in value.items():
                    merged[n] = merged.get(n, 0) + c
                setattr(total, key, merged)
            else:
                setattr(total, key, getattr(total, key) + value)
    return total


def policy_stats(stats: list[GenerationStats]) -> dict[str, Any]:
    total = total_stats(stats)
    return total.model_dump(exclude={"tokens_per_second"}) | {
        "fallback_rate": total.fallbacks / total.small_calls if total.small_calls else None,
        "rollback_rate": total.rollbacks / total.large_calls if total.large_calls else None,
        "mean_accepted_draft_length": total.accepted_draft_tokens / total.large_calls if total.large_calls else None,
        "overhead_ms_per_token": 1000 * (total.wall_seconds - total.small_seconds - total.large_seconds)
        / total.new_tokens if total.new_tokens else None,
    }


def quality(measurements: list[Measurement], examples: list[Example], anchor: list[Measurement] | None
            ) -> dict[str, float | None]:
    """Reference metrics and agreement with the anchor (the large model's output) on the prompts done."""
    refs = [e.reference for e in examples[: len(measurements)]]
    q: dict[str, float | None] = reference_metrics([m.text for m in measurements], refs)
    tokens = [m.tokens for m in measurements]
    q["agreement"] = token_agreement(tokens, [m.tokens for m in anchor]) if anchor else None
    q["exact_match"] = exact_match(tokens, [m.tokens for m in anchor]) if anchor else None
    return q


def fast_path_of(pair: ModelPair, method: Method, config: GenerationConfig) -> str:
    return resolve_fast_path(method.config(config).fast_path, {"small": pair.small, "large": pair.large}, pair.device)


def summarize(methods: list[Method], results: Results, examples: list[Example],
              costs: CostModel | None = None, fast_paths: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """One row per method: speed, speedups over the single-model baselines (measured, and modelled by
    `costs` for the methods that ran on its fast path, `fast_paths` naming each method's), quality,
    policy statistics."""
    tps = {m.name: tokens_per_second(results[m.name]) for m in methods}
    priced = {m.name for m in methods if costs and results[m.name] and results[m.name][0].stats is not None
              and (fast_paths or {}).get(m.name) == costs.identity.get("fast_path")}
    anchor = next((results[b] for b in ("large", "large-hf") if b in results), None)
    rows = {}
    for m in methods:
        done = results[m.name]
        q = quality(done, examples, anchor)
        rows[m.name] = {
            "tokens_per_s": tps[m.name], "new_tokens": sum(len(x.tokens) for x in done),
            "seconds": sum(x.seconds for x in done),
            "speedup_vs_large": tps[m.name] / tps["large"] if "large" in tps else None,
            "speedup_vs_large_hf": tps[m.name] / tps["large-hf"] if "large-hf" in tps else None,
            "modelled_speedup_vs_large": speedup(done, results["large"][: len(done)], costs)
            if m.name in priced and "large" in priced else None,
            "chrf": q["chrf"], "bleu": q["bleu"], "rouge_l": q["rouge_l"],
            "agreement_with_large": q["agreement"], "exact_match_with_large": q["exact_match"],
            "params": m.policy.params() if m.policy else None,
            "generation": m.generation or None,
            "peak_gpu_mib": max((x.peak_gpu_mib for x in done if x.peak_gpu_mib is not None), default=None),
            "stats": policy_stats([x.stats for x in done]) if done and done[0].stats is not None else None,
        }
    return rows


# --- the machine -----------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(pair: ModelPair) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        bild_version = version(DISTRIBUTION)
    except PackageNotFoundError:
        bild_version = "unknown"
    info = {
        "platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "bild": bild_version, "device": str(pair.device), "dtype": str(pair.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    if pair.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(pair.device)
    return info


def peak_memory() -> dict[str, float]:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    mem = {"peak_rss_mib": kib / 1024}
    if torch.cuda.is_available():
        mem["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return mem


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short content hash: the config and a sample of every weight (cheap even for large models)."""
    import hashlib

    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.state_dict().items():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def pair_identity(pair: ModelPair) -> dict[str, str]:
    """What a result or a cost model was measured on: the models (names and content), device, dtype."""
    hardware = torch.cuda.get_device_name(pair.device) if pair.device.type == "cuda" else cpu_name()
    return {"small": pair.small_name, "large": pair.large_name, "small_hash": model_fingerprint(pair.small),
            "large_hash": model_fingerprint(pair.large), "device": str(pair.device), "hardware": hardware,
            "dtype": str(pair.dtype).removeprefix("torch.")}
