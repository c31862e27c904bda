"""The `bild` command line: `generate` and `policies`.

Every user error is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import ValidationError

from bild.bench import DEFAULT_METHODS
from bild.errors import BildError
from bild.presets import LOCAL_PAIRS, PAIRS, resolve_pair
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


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-draft-tokens", type=parse_cap, default=10,
                   help="cap on consecutive draft tokens, or 'none' (default 10, as in the paper)")
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help="stop string, repeatable")


def generation_config(args: argparse.Namespace):
    from bild import GenerationConfig

    try:
        return GenerationConfig(max_new_tokens=args.max_new_tokens, max_draft_tokens=args.max_draft_tokens,
                                stop_strings=args.stop)
    except ValidationError as e:
        err = e.errors()[0]
        raise BildError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def load_pair(args: argparse.Namespace):
    from bild import ModelPair

    small, large = resolve_pair(args.pair, args.small, args.large)
    quiet_transformers()
    return ModelPair.from_pretrained(small, large, device=args.device, dtype=args.dtype)


def add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", help=f"named pair: {', '.join(PAIRS)} (local ones are built on first use)")
    p.add_argument("--small", help="small model: hub id or local directory")
    p.add_argument("--large", help="large model: hub id or local directory")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on CUDA)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bild", description="Big Little Decoder: fast decoding "
                                     "with a small and a large model.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one prompt with a policy")
    add_pair_args(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--policy", default="bild", help="registered policy name (see `bild policies`)")
    gen.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="policy parameter, repeatable")
    add_generation_args(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")

    bench = sub.add_parser("bench", help="compare BiLD with the baselines on a prompt set")
    add_pair_args(bench)
    bench.add_argument("--prompts", help="JSONL file with 'prompt' and optional 'reference' per line")
    bench.add_argument("--task", help=f"built-in task: {', '.join(TASKS)}")
    bench.add_argument("--n", type=int, help="use the first N prompts (tasks default to 32)")
    bench.add_argument("--methods", default=DEFAULT_METHODS,
                       help=f"comma-separated (default {DEFAULT_METHODS}); a policy may carry "
                       "overrides: bild@fallback_threshold=0.3@rollback_threshold=3")
    bench.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="set on every listed policy that has this parameter; repeatable")
    bench.add_argument("--repeats", type=int, default=1, help="timed runs per prompt and method (median kept)")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add_generation_args(bench)
    bench.add_argument("--json", metavar="OUT", help="write the report here (and OUT.samples.jsonl), as it runs")
    bench.add_argument("--plot", metavar="OUT.png", help="draw quality against speedup")

    build = sub.add_parser("build-pair", help="train the local pair from the Python standard library")
    build.add_argument("--preset", default="cpu", choices=sorted(LOCAL_PAIRS.values()))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")

    demo = sub.add_parser("demo", help="build the local pair if needed, then a short bench on it")
    demo.add_argument("--n", type=int, default=8)

    pol = sub.add_parser("policies", help="list registered policies and their parameters")
    pol.add_argument("--json", action="store_true")
    return parser


# --- commands --------------------------------------------------------------------------------


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def run_generate(args: argparse.Namespace) -> None:
    from bild import generate
    from policies import make_policy

    policy = make_policy(args.policy, parse_params(args.param))
    config = generation_config(args)
    pair = load_pair(args)
    result = generate(pair, args.prompt, policy, config)
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
                   "max": p.get("maximum", p.get("exclusiveMaximum")),
                   "description": p.get("description", "")} for key, p in props.items()]
        rows.append({"name": name, "description": cls.describe(), "params": params})
    return rows


def run_policies(args: argparse.Namespace) -> None:
    rows = policy_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['name']}: {row['description']}")
        for p in row["params"]:
            bounds = f"[{p['min']}, {p['max']}]"
            print(f"    {p['name']} ({p['type']}, default {p['default']}, range {bounds}): {p['description']}")


def run_bench(args: argparse.Namespace) -> None:
    from bild.bench import format_table, parse_methods, plot, run_bench
    from bild.tasks import load_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods, parse_params(args.param))
    config = generation_config(args)
    examples = load_examples(args.prompts, args.task, args.n)
    pair = load_pair(args)
    run_config = {"pair": args.pair, "small": pair.small_name, "large": pair.large_name,
                  "prompts": args.prompts, "task": args.task}
    report = run_bench(pair, examples, methods, config, repeats=args.repeats, out=args.json, run_config=run_config)
    print(format_table(report))
    if args.plot:
        plot(report, args.plot)


def run_build_pair(args: argparse.Namespace) -> None:
    from bild.localpair import build_local_pair

    print(build_local_pair(args.preset, force=args.force))


def run_demo(args: argparse.Namespace) -> None:
    run_bench(build_parser().parse_args(["bench", "--pair", "local", "--task", "pycode", "--n", str(args.n),
                                         "--max-new-tokens", "48"]))


COMMANDS = {"generate": run_generate, "policies": run_policies, "bench": run_bench,
            "build-pair": run_build_pair, "demo": run_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except BildError as e:
        print(f"bild: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bild: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
