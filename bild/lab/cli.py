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

Flags are built from the option models (bild/lab/options.py and the core's GenerationConfig):
a setting's name, default, bounds and help are defined there once. Every user error is one
line on stderr and exit code 2, never a traceback. `--help` imports neither torch nor the lab's
heavy dependencies.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from bild.config import GenerationConfig
from bild.errors import BildError
from bild.lab.options import (
    AlignOptions,
    BenchOptions,
    CalibrateOptions,
    GenerateOptions,
    TracesOptions,
    TrainPolicyOptions,
    TuneOptions,
    parse_pairs,
)

FLAGS = {"stop_strings": "stop", "json_out": "json", "json_output": "json", "params": "param"}
KEY_VALUE = ("params", "space")  # repeatable KEY=VALUE flags that fill a mapping
DEMO_METHODS = ("large,large-hf,small,hf-assisted,exact,exact@fallback_threshold=0,adaptive,bild,"
                "bild@fallback_threshold=0.3@rollback_threshold=2")

# --- flags from option models -------------------------------------------------------------------------


def flag(name: str) -> str:
    return "--" + FLAGS.get(name, name).replace("_", "-")


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    """One flag per field of `model` (and of nested models), unset unless given."""
    for name, info in model.model_fields.items():
        if name == "command":
            continue
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            add_options(parser, info.annotation, f"{prefix}{name}.")
            continue
        default = "" if info.is_required() or info.default in (None, [], {}) else f" (default: {info.default})"
        kwargs: dict[str, Any] = {"dest": prefix + name, "default": argparse.SUPPRESS,
                                  "help": (info.description or "") + default, "required": info.is_required()}
        origin = typing.get_origin(info.annotation)
        if info.annotation is bool:
            kwargs["action"] = "store_true"
        elif origin in (list, dict) or name in KEY_VALUE:
            kwargs |= {"action": "append", "metavar": "KEY=VALUE" if name in KEY_VALUE else "VALUE"}
            if name == "stop_strings":
                kwargs["help"] += r"; repeatable; understands \n and \t escapes"
            elif name in KEY_VALUE:
                kwargs["help"] += "; repeatable"
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
        if dest in ("command", "handler"):
            continue
        *parents, name = dest.split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
        if name in KEY_VALUE:
            value = parse_pairs(value, f"--{FLAGS.get(name, name)}")
        elif name == "stop_strings":
            value = [unescape(v) for v in value]
        elif name == "objectives" and isinstance(value, list):
            value = ",".join(value)
        target[name] = value
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][-1]) if err["loc"] else ""
        where = "generation settings" if field == "generation" else flag(field) if field else "options"
        raise BildError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


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
          f"fallbacks {s.fallbacks}, rollbacks {s.rollbacks}", file=sys.stderr)


def run_policies(args: argparse.Namespace) -> None:
    from bild.registry import list_policies, parameters

    rows = [{"name": name, "description": cls.describe(), "params": [p.model_dump() for p in parameters(cls)]}
            for name, cls in list_policies().items()]
    if args.json:
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
    from bild.lab.experiment import execute_bench

    execute_bench(options)


def run_tune(options: TuneOptions) -> None:
    from bild.lab.experiment import execute_tune

    execute_tune(options)


def run_config(args: argparse.Namespace) -> None:
    from bild.lab.experiment import execute, load_experiment

    execute(load_experiment(args.config, args.set))


def run_compare(args: argparse.Namespace) -> None:
    from bild.lab.compare import compare

    print(compare(args.reports, args.plot))


def run_calibrate(options: CalibrateOptions) -> None:
    from bild.lab.calibrate import calibrate
    from bild.lab.experiment import load_pair
    from bild.lab.report import check_output

    out = check_output(options.out, [])
    costs = calibrate(load_pair(options), options.generation, options.repeats)
    costs.save(out)
    large = ", ".join(f"{1000 * s:.2f}" for s in costs.large.passes)
    print(f"small pass {1000 * costs.small.passes[0]:.2f} ms; large passes of 1..{len(costs.large.passes)} tokens: "
          f"{large} ms; small/large {costs.ratio:.3f}; engine {1000 * costs.overhead_per_pass:.3f} ms per pass; "
          f"written to {out}")


def run_align(options: AlignOptions) -> None:
    from bild.lab.align import align
    from bild.lab.experiment import load_pair
    from bild.lab.tasks import load_examples, load_jsonl

    examples = load_examples(options.prompts, options.task, options.n, options.offset)
    exclude = load_jsonl(options.exclude) if options.exclude else []
    evaluation = load_jsonl(options.eval) if options.eval else []
    pair = load_pair(options)
    summary = align(pair, examples, options.out, options.minutes, options.loss, options.data,
                    options.generation.max_new_tokens, options.teacher_top_k, options.lr, options.batch, exclude,
                    evaluation, options.resume, options.overwrite)
    line = (f"{summary['steps']} steps in {summary['seconds'] / 60:.1f} min on {summary['prompts']} prompts; dev "
            f"agreement {summary['dev_agreement_before']:.3f} -> {summary['dev_agreement_best']:.3f}")
    if "eval" in summary:
        b, a = summary["eval"]["before"], summary["eval"]["after"]
        line += (f"; held-out agreement {b['agreement']:.3f} -> {a['agreement']:.3f}, accepted run "
                 f"{b['expected_accepted_run']:.2f} -> {a['expected_accepted_run']:.2f}")
    print(f"{line}; written to {options.out}")


def run_traces(options: TracesOptions) -> None:
    from bild.lab.experiment import load_pair
    from bild.lab.tasks import load_examples
    from bild.lab.traces import collect_traces

    examples = load_examples(options.prompts, options.task, options.n, options.offset)
    meta = collect_traces(load_pair(options), examples, options.generation, options.out, inputs=[options.prompts],
                          hidden=options.hidden)
    print(f"{meta['rows']} draft steps from {meta['prompts']} prompts written to {options.out} "
          f"({meta['rejected_rate']:.1%} would be rejected by the large model)")


def run_train_policy(options: TrainPolicyOptions) -> None:
    from bild.lab.traces import train_classifier

    t = train_classifier(options.traces, options.out, options.held_out, options.rule, options.rollback_threshold,
                         options.model, options.hidden)
    low, high = t["roc_auc_interval"]
    base_low, base_high = t["roc_auc_max_prob_interval"]
    print(f"{t['model']} trained on {t['rows']} drafts ({t['prompts']} prompts); held-out ROC AUC "
          f"{t['roc_auc_held_out']:.3f} [{low:.3f}, {high:.3f}] ({t['held_out_rows']} drafts, "
          f"{t['held_out_prompts']} prompts); max probability alone {t['roc_auc_max_prob_held_out']:.3f} "
          f"[{base_low:.3f}, {base_high:.3f}]; saved to {options.out}")


def run_build_pair(args: argparse.Namespace) -> None:
    from bild.lab.localpair import build_local_pair

    print(build_local_pair(args.preset, force=args.force))


def run_demo(args: argparse.Namespace) -> None:
    from bild.lab.experiment import execute_bench

    if args.n < 1:
        raise BildError(f"--n must be at least 1, got {args.n}")
    execute_bench(BenchOptions(pair="local", task="pycode", n=args.n, wandb_mode=args.wandb_mode,
                               generation=GenerationConfig(max_new_tokens=48),
                               methods=DEMO_METHODS))


COMMANDS: dict[str, tuple[str, type[BaseModel] | None, Any]] = {
    "generate": ("decode one prompt with a policy", GenerateOptions, run_generate),
    "bench": ("compare BiLD with the baselines on a prompt set", BenchOptions, run_bench),
    "tune": ("search a policy's parameters with Optuna (speed vs quality)", TuneOptions, run_tune),
    "calibrate": ("measure a cost model of a pair on this device", CalibrateOptions, run_calibrate),
    "align": ("fine-tune the small model toward the large one's predictions", AlignOptions, run_align),
    "traces": ("record labelled draft features for the learned policy", TracesOptions, run_traces),
    "train-policy": ("train the learned policy's classifier on traces", TrainPolicyOptions, run_train_policy),
}


def build_parser() -> argparse.ArgumentParser:
    from bild.lab.presets import LOCAL_PAIRS

    parser = argparse.ArgumentParser(prog="bild", description="Big Little Decoder: fast decoding "
                                     "with a small and a large model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, model, _) in COMMANDS.items():
        add_options(sub.add_parser(name, help=help_text, description=help_text), model)

    run = sub.add_parser("run", help="run a bench or tune from a YAML config")
    run.add_argument("config", help="YAML file, e.g. experiments/pycode_tune.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override an option of the config (dotted for nested ones: generation.max_new_tokens=32)")

    build = sub.add_parser("build-pair", help="train the local pair from the Python standard library")
    build.add_argument("--preset", default="cpu", choices=sorted(LOCAL_PAIRS.values()))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")

    demo = sub.add_parser("demo", help="build the local pair if needed, then a short bench on it")
    demo.add_argument("--n", type=int, default=8, help="prompts to bench (default 8)")
    demo.add_argument("--wandb-mode", default="offline", choices=["offline", "online", "disabled"])

    comp = sub.add_parser("compare", help="bench reports side by side, with the setup differences")
    comp.add_argument("reports", nargs="+", metavar="REPORT.json", help="reports of `bild bench --json`")
    comp.add_argument("--plot", metavar="OUT.png", help="draw every report's methods in one figure")

    pol = sub.add_parser("policies", help="list registered policies and their parameters")
    pol.add_argument("--json", action="store_true")
    return parser


PLAIN = {"run": run_config, "build-pair": run_build_pair, "demo": run_demo, "policies": run_policies,
         "compare": run_compare}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("bild").addHandler(handler)
    logging.getLogger("bild").setLevel(logging.INFO)
    try:
        if args.command in COMMANDS:
            _, model, run = COMMANDS[args.command]
            run(options_from(args, model))
        else:
            PLAIN[args.command](args)
    except BildError as e:
        print(f"bild: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bild: interrupted; what was measured is saved: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
