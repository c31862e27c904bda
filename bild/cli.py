"""The `bild` command line.

    bild generate   one prompt, one policy
    bild bench      every method on a prompt set, side by side
    bild tune       an Optuna search over a policy's parameters
    bild run        a bench or a tune from a YAML config (experiments/)
    bild policies   the registered policies, their parameters and bounds
    bild build-pair / bild demo   the offline local pair, and a short bench on it

Flags fill the pydantic option models of bild/options.py, which YAML configs fill too. Every
user error is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from bild.bench import DEFAULT_METHODS
from bild.errors import BildError
from bild.presets import LOCAL_PAIRS, PAIRS
from bild.tasks import TASKS
from policies.registry import parse_params

# --- arguments -------------------------------------------------------------------------------


def parse_cap(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number or 'none'") from None


def add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", help=f"named pair: {', '.join(PAIRS)} (local ones are built on first use)")
    p.add_argument("--small", help="small model: hub id or local directory")
    p.add_argument("--large", help="large model: hub id or local directory")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on CUDA)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-draft-tokens", type=parse_cap, default=10,
                   help="cap on consecutive draft tokens, or 'none' (default 10, as in the paper)")
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help="stop string, repeatable")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample from the smallest set of tokens with this mass")
    p.add_argument("--seed", type=int, help="seed for sampling (and for tune's sampler)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Prompts, measuring and W&B: shared by bench and tune."""
    p.add_argument("--prompts", help="JSONL file with 'prompt' and optional 'reference' per line")
    p.add_argument("--task", help=f"built-in task: {', '.join(TASKS)}")
    p.add_argument("--n", type=int, help="use the first N prompts (tasks default to 32)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per prompt (median kept)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online", "disabled"],
                   help="W&B logging (default offline: no account or network; `wandb sync` uploads later)")
    p.add_argument("--wandb-project", default="bild")
    p.add_argument("--wandb-dir", help="where W&B writes its runs (default: the current directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bild", description="Big Little Decoder: fast decoding "
                                     "with a small and a large model.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one prompt with a policy")
    add_pair_args(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--policy", default="bild", help="registered policy name (see `bild policies`)")
    gen.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter, repeatable")
    add_generation_args(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")

    bench = sub.add_parser("bench", help="compare BiLD with the baselines on a prompt set")
    add_pair_args(bench)
    add_run_args(bench)
    add_generation_args(bench)
    bench.add_argument("--methods", default=DEFAULT_METHODS,
                       help=f"comma-separated (default {DEFAULT_METHODS}); a policy may carry "
                       "overrides: bild@fallback_threshold=0.3@rollback_threshold=3")
    bench.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="set on every listed policy that has this parameter; repeatable")
    bench.add_argument("--json", dest="json_out", metavar="OUT", help="write the report here (and "
                       "OUT.samples.jsonl) as it runs")
    bench.add_argument("--plot", metavar="OUT.png", help="draw quality against speedup")

    tune = sub.add_parser("tune", help="search a policy's parameters with Optuna (speed vs quality)")
    add_pair_args(tune)
    add_run_args(tune)
    add_generation_args(tune)
    tune.add_argument("--policy", required=True, help="registered policy to tune")
    tune.add_argument("--trials", type=int, default=20, help="the study's total of finished trials (all workers)")
    tune.add_argument("--study", help="study name (default bild-POLICY-TASK); workers with one name share it")
    tune.add_argument("--storage", default="sqlite:///bild-tune.db",
                      help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db for many workers")
    tune.add_argument("--objectives", default="speedup,quality",
                      help="speedup,quality (Pareto front) or speedup (with --max-quality-drop)")
    tune.add_argument("--metric", default="chrf", choices=["chrf", "bleu", "rouge_l", "agreement"])
    tune.add_argument("--max-quality-drop", type=float, help="quality points the large model's may drop by")
    tune.add_argument("--timeout", type=float, help="stop this worker after S seconds")
    tune.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH",
                      help="narrow (LOW:HIGH), choose (A|B) or fix (VALUE) a parameter; repeatable")
    tune.add_argument("--out-dir", default=".", help="where the front JSON and PNG go")
    tune.add_argument("--heartbeat", type=int, default=30,
                      help="seconds between worker heartbeats; a trial silent for twice that is retried")
    tune.add_argument("--wandb-per", default="trial", choices=["trial", "study"], help="one W&B run per ...")

    traces = sub.add_parser("traces", help="record labelled draft features for the learned policy")
    add_pair_args(traces)
    traces.add_argument("--prompts", help="JSONL file with 'prompt' per line")
    traces.add_argument("--task", help=f"built-in task: {', '.join(TASKS)}")
    traces.add_argument("--n", type=int, help="use the first N prompts (tasks default to 32)")
    add_generation_args(traces)
    traces.add_argument("--out", required=True, help="JSONL file to write (and OUT.meta.json)")

    train = sub.add_parser("train-policy", help="train the learned policy's classifier on traces")
    train.add_argument("--traces", required=True, help="JSONL written by `bild traces`")
    train.add_argument("--out", required=True, help="classifier JSON to write (load it with --param path=...)")
    train.add_argument("--held-out", type=float, default=0.2, help="fraction of prompts held out for the AUC")

    run = sub.add_parser("run", help="run a bench or tune from a YAML config")
    run.add_argument("config", help="YAML file, e.g. experiments/pycode_tune.yaml")

    build = sub.add_parser("build-pair", help="train the local pair from the Python standard library")
    build.add_argument("--preset", default="cpu", choices=sorted(LOCAL_PAIRS.values()))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")

    demo = sub.add_parser("demo", help="build the local pair if needed, then a short bench on it")
    demo.add_argument("--n", type=int, default=8)
    demo.add_argument("--wandb-mode", default="offline", choices=["offline", "online", "disabled"])

    pol = sub.add_parser("policies", help="list registered policies and their parameters")
    pol.add_argument("--json", action="store_true")
    return parser


def options_from(args: argparse.Namespace, model: type) -> Any:
    """The option model of a command, from its parsed flags."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    if "params" in model.model_fields:
        values["params"] = parse_params(args.param)
    if "space" in model.model_fields:
        values["space"] = parse_params(args.space)
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        raise BildError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


# --- commands --------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> None:
    from bild import generate
    from bild.experiment import generation_config, load_pair
    from bild.options import Options
    from policies import make_policy

    policy = make_policy(args.policy, parse_params(args.param))
    options = options_from(args, Options)
    result = generate(load_pair(options), args.prompt, policy, generation_config(options))
    if args.json:
        print(json.dumps({"policy": policy.name, "params": policy.params(), **result.model_dump()}))
        return
    print(result.text)
    s = result.stats
    print(f"[{policy.name}] {s.new_tokens} tokens in {s.wall_seconds:.2f}s ({s.tokens_per_second:.1f} tok/s); "
          f"large calls {s.large_calls}, drafts {s.draft_tokens} ({s.accepted_draft_tokens} accepted), "
          f"fallbacks {s.fallbacks}, rollbacks {s.rollbacks}", file=sys.stderr)


def policy_table() -> list[dict[str, Any]]:
    """Every registered policy with its parameters' types, defaults, bounds and descriptions."""
    from policies import list_policies

    rows = []
    for name, cls in list_policies().items():
        props = cls.model_json_schema().get("properties", {})
        params = [{"name": key, "type": p.get("type", "any"), "default": p.get("default"),
                   "min": p.get("minimum", p.get("exclusiveMinimum")),
                   "max": p.get("maximum", p.get("exclusiveMaximum")), "choices": p.get("enum"),
                   "description": p.get("description", "")} for key, p in props.items()]
        rows.append({"name": name, "description": cls.describe(), "params": params})
    return rows


def run_policies(args: argparse.Namespace) -> None:
    from policies import list_policies

    rows = policy_table()
    required = {name: {k for k, f in cls.model_fields.items() if f.is_required()}
                for name, cls in list_policies().items()}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['name']}: {row['description']}")
        for p in row["params"]:
            if p["choices"]:
                domain = f", one of {'|'.join(map(str, p['choices']))}"
            elif p["min"] is not None or p["max"] is not None:
                domain = f", range [{p['min']}, {p['max']}]"
            else:
                domain = ""
            default = "required" if p["default"] is None and p["name"] in required[row["name"]] else p["default"]
            print(f"    {p['name']} ({p['type']}, default {default}{domain}): {p['description']}")


def run_bench(args: argparse.Namespace) -> None:
    from bild.experiment import execute_bench
    from bild.options import BenchOptions

    execute_bench(options_from(args, BenchOptions))


def run_tune(args: argparse.Namespace) -> None:
    from bild.experiment import execute_tune
    from bild.options import TuneOptions

    execute_tune(options_from(args, TuneOptions))


def run_config(args: argparse.Namespace) -> None:
    from bild.experiment import execute, load_experiment

    execute(load_experiment(args.config))


def run_traces(args: argparse.Namespace) -> None:
    from bild.experiment import generation_config, load_pair
    from bild.options import Options
    from bild.tasks import load_examples
    from bild.traces import collect_traces

    options = options_from(args, Options)
    examples = load_examples(args.prompts, args.task, args.n)
    meta = collect_traces(load_pair(options), examples, generation_config(options), args.out)
    print(f"{meta['rows']} draft steps from {meta['prompts']} prompts written to {args.out} "
          f"({meta['rejected_rate']:.1%} would be rejected by the large model)")


def run_train_policy(args: argparse.Namespace) -> None:
    from bild.traces import train_classifier

    if not 0 < args.held_out < 1:
        raise BildError(f"--held-out must be between 0 and 1, got {args.held_out}")
    t = train_classifier(args.traces, args.out, args.held_out)
    print(f"trained on {t['rows']} draft steps ({t['prompts']} prompts); held-out ROC AUC "
          f"{t['roc_auc_held_out']:.3f} ({t['held_out_rows']} steps, {t['held_out_prompts']} prompts; "
          f"max probability alone: {t['roc_auc_max_prob_held_out']:.3f}); saved to {args.out}")


def run_build_pair(args: argparse.Namespace) -> None:
    from bild.localpair import build_local_pair

    print(build_local_pair(args.preset, force=args.force))


def run_demo(args: argparse.Namespace) -> None:
    from bild.experiment import execute_bench
    from bild.options import BenchOptions

    execute_bench(BenchOptions(pair="local", task="pycode", n=args.n, max_new_tokens=48, wandb_mode=args.wandb_mode,
                               methods="large,large-hf,small,hf-assisted,exact,exact@fallback_threshold=0.4,"
                               "bild,bild@fallback_threshold=0.3@rollback_threshold=2"))


COMMANDS = {"generate": run_generate, "policies": run_policies, "bench": run_bench, "tune": run_tune,
            "run": run_config, "traces": run_traces, "train-policy": run_train_policy,
            "build-pair": run_build_pair, "demo": run_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except BildError as e:
        print(f"bild: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bild: interrupted; what was measured is saved (rerun the same command to resume a study)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
