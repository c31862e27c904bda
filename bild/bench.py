"""`bild bench`: every method on the same prompts, side by side, in one process.

Methods are the baselines (`large` and `small`: this engine with one model; `large-hf`:
transformers' greedy `generate`; `hf-assisted`: transformers' assisted generation with its
default settings) and any registered policy, optionally with parameter overrides
(`bild@fallback_threshold=0.3@rollback_threshold=3`).

Honest timing: the pair is loaded once; every method is warmed up on the first prompt; for
each prompt the methods run in a rotated order (so no method always runs first or last) and
`repeats` times, keeping the median wall time (CUDA synchronised). Tokens per second is total
new tokens over total median time; speedups are ratios of tokens per second.

Nothing measured is lost: after every prompt the samples are appended to `<out>.samples.jsonl`
and the summary `<out>` is rewritten (marked incomplete until the run finishes).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from pydantic import BaseModel

from bild.config import GenerationConfig
from bild.engine import encode_prompt, generate, generate_single
from bild.errors import BildError
from bild.metrics import exact_match, reference_metrics, token_agreement
from bild.pair import ModelPair
from bild.policy import Policy
from bild.stats import GenerationStats
from bild.stopping import Stopper
from bild.tasks import Example

BASELINES = ("large", "large-hf", "small", "hf-assisted")
DEFAULT_METHODS = "large,large-hf,small,hf-assisted,exact,bild"


# --- methods ---------------------------------------------------------------------------------


class Method(BaseModel):
    model_config = {"arbitrary_types_allowed": True}

    name: str
    policy: Policy | None = None


def parse_methods(text: str, params: dict[str, str]) -> list[Method]:
    """`"large,exact,bild@fallback_threshold=0.3"` -> methods; `params` apply to every policy having them."""
    from policies import list_policies, make_policy, policy_class
    from policies.registry import parse_params

    methods = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        base, *overrides = item.split("@")
        if base in BASELINES:
            if overrides:
                raise BildError(f"method {item!r}: baselines take no parameters")
            methods.append(Method(name=item))
            continue
        try:
            cls = policy_class(base)
        except BildError as e:
            import difflib

            known = [*BASELINES, *list_policies()]
            close = difflib.get_close_matches(base, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BildError(f"unknown method {base!r}: {hint}methods are {', '.join(known)}") from e
        shared = {k: v for k, v in params.items() if k in cls.model_fields}
        methods.append(Method(name=item, policy=make_policy(base, {**shared, **parse_params(overrides)})))
    if not methods:
        raise BildError("no methods given: e.g. --methods large,large-hf,exact,bild")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise BildError(f"a method is listed twice in {text!r}")
    unused = set(params) - {k for m in methods if m.policy for k in type(m.policy).model_fields}
    if unused:
        raise BildError(f"--param {', '.join(sorted(unused))}: no listed policy has such a parameter")
    return methods


def hf_generate(pair: ModelPair, ids: list[int], config: GenerationConfig, assistant: bool) -> list[int]:
    """transformers' own decoding (greedy or sampled; optionally assisted by the small model): new token ids."""
    inputs = torch.tensor([ids], device=pair.device)  # [1, T]
    kwargs: dict[str, Any] = {}
    if assistant:
        kwargs["assistant_model"] = pair.small
    if config.stop_strings:
        kwargs |= {"stop_strings": config.stop_strings, "tokenizer": pair.tokenizer}
    if config.temperature > 0:
        kwargs |= {"temperature": config.temperature, "top_k": config.top_k or 0, "top_p": config.top_p or 1.0}
    out = pair.large.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=config.temperature > 0,
                              num_beams=1,
                              max_new_tokens=config.max_new_tokens, pad_token_id=pair.tokenizer.pad_token_id
                              if pair.tokenizer.pad_token_id is not None else pair.tokenizer.eos_token_id,
                              **kwargs)
    return out[0, 1 if pair.encoder_decoder else len(ids):].tolist()


Run = Callable[[list[int]], tuple[list[int], GenerationStats | None]]


def runner(pair: ModelPair, method: Method, config: GenerationConfig) -> Run:
    """A function prompt ids -> (new token ids, engine statistics or None)."""
    if method.policy is not None:
        policy = method.policy

        def run(ids):
            r = generate(pair, ids, policy, config)
            return r.token_ids, r.stats
    elif method.name in ("large", "small"):
        def run(ids):
            r = generate_single(pair, ids, method.name, config)
            return r.token_ids, r.stats
    else:
        assisted = method.name == "hf-assisted"

        def run(ids):
            return hf_generate(pair, ids, config, assisted), None
    return run


# --- measuring -------------------------------------------------------------------------------


def timed(fn: Callable, *args) -> tuple[float, Any]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(pair: ModelPair) -> dict[str, Any]:
    info = {
        "platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "device": str(pair.device), "dtype": str(pair.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


def measure(run: Run, ids: list[int], repeats: int) -> tuple[float, list[int], GenerationStats | None]:
    """Median wall time of `repeats` runs on one prompt, with the (deterministic) output of the last."""
    times, tokens, stats = [], [], None
    for _ in range(repeats):
        seconds, (tokens, stats) = timed(run, ids)
        times.append(seconds)
    return statistics.median(times), tokens, stats


def output_text(pair: ModelPair, tokens: list[int], config: GenerationConfig) -> str:
    text = pair.tokenizer.decode(tokens, skip_special_tokens=True)
    return Stopper(pair.tokenizer, set(), config.max_new_tokens, config.stop_strings).trim_text(text)


class Samples:
    """One method's outputs and median times, in prompt order."""

    def __init__(self) -> None:
        self.tokens: list[list[int]] = []
        self.texts: list[str] = []
        self.seconds: list[float] = []
        self.stats: list[GenerationStats] = []

    def add(self, seconds: float, tokens: list[int], text: str, stats: GenerationStats | None) -> None:
        self.seconds.append(seconds)
        self.tokens.append(tokens)
        self.texts.append(text)
        if stats is not None:
            self.stats.append(stats)

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.tokens)) / max(sum(self.seconds), 1e-9)


def policy_stats(stats: list[GenerationStats]) -> dict[str, Any] | None:
    if not stats:
        return None
    total = GenerationStats(**{k: sum(getattr(s, k) for s in stats) for k in GenerationStats.model_fields})
    out = total.model_dump(exclude={"tokens_per_second"})
    out |= {
        "fallback_rate": total.fallbacks / total.small_calls if total.small_calls else None,
        "rollback_rate": total.rollbacks / total.large_calls if total.large_calls else None,
        "mean_accepted_draft_length": total.accepted_draft_tokens / total.large_calls if total.large_calls else None,
    }
    return out


def summarize(methods: list[Method], samples: dict[str, Samples], examples: list[Example]) -> dict[str, Any]:
    done = len(next(iter(samples.values())).tokens)
    refs = [e.reference for e in examples[:done]]
    tps = {m.name: samples[m.name].tokens_per_s for m in methods}
    anchor = next((b for b in ("large", "large-hf") if b in samples), None)
    result = {}
    for m in methods:
        s = samples[m.name]
        row: dict[str, Any] = {
            "tokens_per_s": tps[m.name], "new_tokens": sum(map(len, s.tokens)), "seconds": sum(s.seconds),
            "speedup_vs_large": tps[m.name] / tps["large"] if "large" in tps else None,
            "speedup_vs_large_hf": tps[m.name] / tps["large-hf"] if "large-hf" in tps else None,
            **reference_metrics(s.texts, refs),
            "agreement_with_large": token_agreement(s.tokens, samples[anchor].tokens) if anchor else None,
            "exact_match_with_large": exact_match(s.tokens, samples[anchor].tokens) if anchor else None,
            "params": m.policy.params() if m.policy else None,
            "stats": policy_stats(s.stats) if m.policy else None,
        }
        result[m.name] = row
    return result


def notes_for(methods: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    if "large" in methods and "large-hf" in methods:
        ratio = methods["large"]["tokens_per_s"] / methods["large-hf"]["tokens_per_s"]
        if ratio < 0.95:
            notes.append(f"the engine's large-only decoding runs at {ratio:.2f}x transformers' generate: "
                         "the engine has per-token overhead to remove")
    return notes


# --- the run -----------------------------------------------------------------------------------


class BenchWriter:
    """Writes `<out>` (summary, rewritten) and `<out>.samples.jsonl` (appended) as results come."""

    def __init__(self, out: str | None) -> None:
        self.out = Path(out) if out else None
        if self.out is None:
            return
        self.samples_path = self.out.with_name(self.out.name.removesuffix(".json") + ".samples.jsonl")
        try:
            self.out.write_text("{}\n")
            self.samples_path.write_text("")
        except OSError as e:
            raise BildError(f"cannot write results to {str(self.out)!r}: {e.strerror}") from e

    def sample(self, record: dict[str, Any]) -> None:
        if self.out:
            with self.samples_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, report: dict[str, Any]) -> None:
        if self.out:
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(self.out)


def run_bench(
    pair: ModelPair, examples: list[Example], methods: list[Method], config: GenerationConfig,
    repeats: int = 1, out: str | None = None, run_config: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Samples]]:
    """Measure every method on every example; return (and write) the report, and the samples."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise BildError(f"--repeats must be at least 1, got {repeats}")
    writer = BenchWriter(out)
    prompts = [encode_prompt(pair, e.prompt, config.max_new_tokens) for e in examples]
    runs = {m.name: runner(pair, m, config) for m in methods}
    for m in methods:  # warm-up: first calls pay for allocation, kernels, lazy imports
        runs[m.name](prompts[0])
    samples = {m.name: Samples() for m in methods}
    report: dict[str, Any] = {"machine": machine_info(pair), "config": {
        **(run_config or {}), "methods": [m.name for m in methods], "n": len(examples), "repeats": repeats,
        **config.model_dump()}, "methods": {}, "notes": [], "complete": False}
    bar = tqdm(total=len(examples) * len(methods), desc="bench", unit="run", disable=not progress, file=sys.stderr)
    try:
        for i, (example, ids) in enumerate(zip(examples, prompts, strict=True)):
            order = methods[i % len(methods):] + methods[: i % len(methods)]
            for m in order:
                seconds, tokens, stats = measure(runs[m.name], ids, repeats)
                text = output_text(pair, tokens, config)
                samples[m.name].add(seconds, tokens, text, stats)
                writer.sample({"id": example.id, "method": m.name, "seconds": seconds, "text": text,
                               "token_ids": tokens, "reference": example.reference,
                               "stats": stats.model_dump() if stats else None})
                bar.update()
            report["methods"] = summarize(methods, samples, examples)
            report["prompts_done"] = i + 1
            report["memory"] = peak_memory()
            writer.summary(report)
    finally:
        bar.close()
    report["notes"] = notes_for(report["methods"])
    report["complete"] = True
    writer.summary(report)
    return report, samples


# --- presentation ------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    headers = ["method", "tok/s", "x large", "x large-hf", "chrF", "BLEU", "agree", "exact",
               "fallback", "rollback", "acc.len", "calls/tok"]
    rows = []
    for name, r in report["methods"].items():
        st = r["stats"] or {}
        rows.append([name, _fmt(r["tokens_per_s"], ".1f"), _fmt(r["speedup_vs_large"], ".2f"),
                     _fmt(r["speedup_vs_large_hf"], ".2f"), _fmt(r["chrf"], ".1f"), _fmt(r["bleu"], ".1f"),
                     _fmt(r["agreement_with_large"], ".3f"), _fmt(r["exact_match_with_large"], ".2f"),
                     _fmt(st.get("fallback_rate"), ".2f"), _fmt(st.get("rollback_rate"), ".2f"),
                     _fmt(st.get("mean_accepted_draft_length"), ".2f"), _fmt(st.get("large_calls_per_token"), ".2f")])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(c.ljust(w) if j == 0 else c.rjust(w)  # noqa: E731
                                   for j, (c, w) in enumerate(zip(cells, widths, strict=True)))
    m = report["machine"]
    head = (f"{report['config'].get('n')} prompts, {report['config'].get('max_new_tokens')} new tokens, "
            f"{m['device']} {m['dtype']}, torch {m['torch']}, transformers {m['transformers']}")
    mem = report.get("memory", {})
    tail = [f"peak RSS {mem['peak_rss_mib']:.0f} MiB"] if mem else []
    return "\n".join([head, line(headers), line(["-" * w for w in widths]), *map(line, rows), *tail,
                      *(f"note: {n}" for n in report.get("notes", []))])


def plot(report: dict[str, Any], path: str) -> None:
    """Quality (chrF, else agreement with large) against speedup over `large`, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["methods"]
    metric = "chrf" if all(r["chrf"] is not None for r in rows.values()) else "agreement_with_large"
    speed = "speedup_vs_large" if all(r["speedup_vs_large"] is not None for r in rows.values()) else "tokens_per_s"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>pPX*h"
    for i, (name, r) in enumerate(rows.items()):  # a legend, not labels: nearby points would overlap
        ax.scatter(r[speed], r[metric], s=40, marker=markers[i % len(markers)], label=name)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(speed.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{report['config'].get('large', '')}: quality vs speed", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise BildError(f"cannot write the plot to {path!r}: {e.strerror}") from e
    finally:
        plt.close(fig)
