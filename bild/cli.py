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

from bild.errors import BildError

# --- arguments -------------------------------------------------------------------------------


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; pydantic coerces the values per field."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BildError(f"--param {item!r} is not KEY=VALUE (e.g. --param fallback_threshold=0.5)")
        params[key.strip()] = value.strip()
    return params


def parse_cap(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number or 'none'") from None


def add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", required=True, help="small model: hub id or local directory")
    p.add_argument("--large", required=True, help="large model: hub id or local directory")
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
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--max-draft-tokens", type=parse_cap, default=10,
                     help="cap on consecutive draft tokens, or 'none' (default 10, as in the paper)")
    gen.add_argument("--stop", action="append", default=[], metavar="STRING", help="stop string, repeatable")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")

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
    from bild import GenerationConfig, ModelPair, generate
    from policies import make_policy

    policy = make_policy(args.policy, parse_params(args.param))
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, max_draft_tokens=args.max_draft_tokens,
                              stop_strings=args.stop)
    quiet_transformers()
    pair = ModelPair.from_pretrained(args.small, args.large, device=args.device, dtype=args.dtype)
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


COMMANDS = {"generate": run_generate, "policies": run_policies}


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
