"""Running a bench or a tune from validated options, whether they came from flags or a YAML file.

`bild run CONFIG.yaml [--set key=value ...]` loads a file such as experiments/pycode_tune.yaml
(`command: bench` or `command: tune`, then the options of that command, generation settings
under `generation:`) and runs it exactly as the command line would.

What a run records about itself has two parts: its `identity` (what the results depend on: the
models by content, the prompt set by content and slice, the generation settings, the dtype; a
resumed bench or study must match it) and its `context` (where and how it ran: names and
paths, device, machine, versions, git commit, the experiment file and its description). Both
go to the report, the study and W&B.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bild.errors import BildError, describe_errors, unknown_name
from bild.files import write_atomic
from bild.lab.distributed import agree, fail, local_rank, settle, shard, shard_path, share, start, world
from bild.lab.options import BenchOptions, Experiment, Options, RunOptions, TuneOptions
from bild.lab.render import PLOT_SUFFIXES

# --- loading ----------------------------------------------------------------------------------------


def config_key(loc: tuple) -> str:
    """Where a config's problem is, as its YAML key (the command's tag left out)."""
    return ".".join(str(p) for p in loc if p not in ("bench", "tune"))


def apply_overrides(data: dict[str, Any], overrides: list[str], model: type) -> None:
    """`--set key=value` (dotted for nested options, e.g. generation.max_new_tokens=32), in place."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise BildError(f"--set {item!r} is not KEY=VALUE (e.g. --set n=16 or --set generation.max_new_tokens=32)")
        *parents, leaf = key.split(".")
        target, fields = data, model.model_fields
        for part in parents:
            if part not in fields or not hasattr(fields[part].annotation, "model_fields"):
                raise unknown_name("option group", part, [k for k, f in fields.items()
                                                           if hasattr(f.annotation, "model_fields")], "option groups")
            fields = fields[part].annotation.model_fields
            target = target.setdefault(part, {})
        if leaf not in fields:
            raise unknown_name("option", key, [*(".".join([*parents, k]) for k in fields)])
        try:
            target[leaf] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            target[leaf] = text


def load_experiment(path: str | Path, overrides: list[str] = ()) -> BenchOptions | TuneOptions:
    """A validated experiment from a YAML file and `--set` overrides; errors name the file and the field."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise BildError(f"experiment config {str(path)!r} is a folder: give a YAML file, e.g. "
                        "experiments/pycode_tune.yaml")
    if not path.is_file():
        raise BildError(f"experiment config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BildError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("command") not in ("bench", "tune"):
        raise BildError(f"{path}: needs `command: bench` or `command: tune` at the top level")
    apply_overrides(data, list(overrides), BenchOptions if data["command"] == "bench" else TuneOptions)
    try:
        options = TypeAdapter(Experiment).validate_python(data)
    except ValidationError as e:
        raise BildError(f"{path}: {describe_errors(e, where=config_key)}") from None
    options._source = str(path)
    return options


# --- what a run records about itself -------------------------------------------------------------------


def git_commit() -> str | None:
    """The checkout's commit (with `+dirty` for uncommitted changes), when run from a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and dirty else head or None


def identity(options: Options, pair: Any, examples: list[Any] | None = None) -> dict[str, Any]:
    """What results depend on: the models and prompts by content, the generation settings, the dtype."""
    from bild.lab.identity import pair_identity
    from bild.lab.tasks import prompt_hash

    found = {k: v for k, v in pair_identity(pair).items() if k not in ("small", "large", "device", "hardware")}
    found["generation"] = options.generation.model_dump()
    if examples is not None:
        found |= {"prompts_hash": prompt_hash(examples), "n": len(examples)}
    return found


def context(options: Options, pair: Any) -> dict[str, Any]:
    """Where and how a run ran: names, paths, device, machine, versions, commit, experiment file."""
    from bild.lab.identity import machine_info

    found: dict[str, Any] = {"small": pair.small_name, "large": pair.large_name,
                             "tokenizer": pair.tokenizer.name_or_path,
                             "machine": machine_info(pair), "git_commit": git_commit(),
                             "experiment": getattr(options, "_source", None)}
    if isinstance(options, RunOptions):
        found |= {"prompts": options.prompts, "task": options.task, "offset": options.offset,
                  "description": options.description}
    return found


# --- running ------------------------------------------------------------------------------------------


def quiet_transformers() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def placements(options: Options) -> tuple[Any, Any]:
    """The small and large models' placements from the options, checked (before any model loads)."""
    from bild.pair import Placement

    device_map: Any = options.large_device_map
    if device_map is not None and device_map not in ("auto", "balanced", "sequential", "balanced_low_0"):
        path = Path(device_map)
        try:
            device_map = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BildError(f"--large-device-map {str(path)!r}: no such file; give auto, balanced, sequential or a "
                            "JSON file mapping modules to devices") from None
        except (OSError, ValueError) as e:
            raise BildError(f"--large-device-map {str(path)!r} is not a JSON object ({type(e).__name__})") from None
        if not isinstance(device_map, dict):
            raise BildError(f"--large-device-map {str(path)!r} must map module names to devices")
    if options.large_tp is not None:
        _, size = world()
        if size != options.large_tp:
            raise BildError(f"--large-tp {options.large_tp} splits the large model over {options.large_tp} ranks: "
                            f"launch with torchrun --nproc-per-node {options.large_tp} (this is {size} process)")
        if device_map is not None:
            raise BildError("give --large-tp or --large-device-map, not both")
        if not options.generation.greedy and options.generation.seed is None:  # ranks drawing apart: collectives hang
            fail("sampling with --large-tp needs --seed: every rank must draw the same tokens")
    if (options.large_max_memory or options.large_offload) and device_map is None:
        raise BildError("--large-max-memory and --large-offload go with --large-device-map (e.g. auto)")
    return (Placement(device=options.small_device),
            Placement(device_map=device_map, max_memory=options.large_max_memory, offload_folder=options.large_offload,
                      tensor_parallel=options.large_tp is not None))


def rank_device() -> str | None:
    """Under torchrun on GPUs, this rank's own GPU (`cuda:LOCAL_RANK`); else None (the pair's default)."""
    import torch

    return f"cuda:{local_rank()}" if world()[1] > 1 and torch.cuda.is_available() else None


def load_pair(options: Options):
    from bild.lab.presets import resolve_pair
    from bild.pair import ModelPair

    small, large = resolve_pair(options.pair, options.small, options.large)
    small_at, large_at = placements(options)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    quiet_transformers()
    return ModelPair.from_pretrained(small, large, device=options.device or rank_device(), dtype=options.dtype,
                                     small_placement=small_at, large_placement=large_at)


def prepare(options: RunOptions, tests: bool = False):
    """The prompts and the pair of a bench or tune, in the order that fails fastest; `tests`: every example must
    carry tests to run (--execute-code)."""
    from bild.lab.sandbox import has_tests
    from bild.lab.tasks import load_examples

    examples = load_examples(options.prompts, options.task, options.n, options.offset, options.data_dir)
    untested = [e.id for e in examples if not has_tests(e)]
    if tests and untested:
        raise BildError(f"--execute-code: {len(untested)} of {len(examples)} prompts carry no tests to run (first "
                        f"{untested[0]!r}): use it with a task that has tests (humaneval), or drop it")
    return examples, load_pair(options)


def logger_for(options: RunOptions, group: str):
    from bild.lab.wandb_log import WandbLogger

    return WandbLogger(options.wandb_mode, options.wandb_project, group=group, directory=options.wandb_dir)


def front_methods(fronts: list[dict[str, Any]], pair: Any) -> list[Any]:
    """One method per trial of each front (read by `read_front`), after checking it was tuned on this pair."""
    from bild.lab.identity import pair_identity
    from bild.lab.methods import Method
    from policies import make_policy

    ours, methods = pair_identity(pair), []
    for front in fronts:
        label = front.get("study", "front")
        differ = [k for k in ("small_hash", "large_hash") if front.get("setup", {}).get(k, ours[k]) != ours[k]]
        if differ:
            raise BildError(f"front {label!r} was tuned on another pair ({', '.join(differ)} differ): bench it "
                            "with the pair of its study")
        for row in front["front"]:
            params = {k: v for k, v in row.items() if k in front["params"]}
            methods.append(Method(name=f"{label}/trial-{row['trial']}", policy=make_policy(front["policy"], params)))
    return methods


def bench_methods(options: BenchOptions) -> tuple[list[Any], list[dict[str, Any]]]:
    """The methods named by --methods (only `large` by default beside a front) and the fronts to add trials of."""
    from bild.lab.methods import parse_methods
    from bild.lab.tune import read_front

    from_front = bool(options.from_front) or options.study is not None
    listed = options.methods if "methods" in options.model_fields_set or not from_front else "large"
    fronts = [read_front(path) for path in options.from_front]
    if options.study is not None:
        fronts.append(read_front(study_name=options.study, storage=options.storage))
    return parse_methods(listed, options.params), fronts


def check_bench_outputs(options: BenchOptions, inputs: list[Any]) -> None:
    """The report, its samples and the plot may be written (none of them is an input), before a model loads."""
    from bild.lab.outputs import PLOT, REPORT, SAMPLES, check_output
    from bild.lab.report import samples_path

    if options.json_out:
        check_output(options.json_out, inputs, REPORT)
        check_output(samples_path(Path(options.json_out)), inputs, SAMPLES)
    if options.plot:
        if Path(options.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise BildError(f"--plot {options.plot!r}: give a path ending in {', '.join(PLOT_SUFFIXES)}")
        check_output(options.plot, [*inputs, options.json_out], PLOT)


def publish_bench(options: BenchOptions, pair: Any, report: dict[str, Any], examples: list[Any], results: Any
                  ) -> None:
    """The table on stdout, the plot, and the bench's W&B run."""
    from bild.lab.bench import format_table, plot

    print(format_table(report))
    name = run_name("bench", pair, options)
    if options.plot:
        plot(report, options.plot, name)
    origins = {m: r["origin"] for m, r in report["methods"].items() if r["origin"]}
    logger_for(options, "bench").log_bench(name, config={**report["setup"], **report["context"], "policies": origins,
                                                         "options": options.model_dump()}, report=report,
                                           examples=examples, results=results)


def execute_bench(options: BenchOptions) -> dict[str, Any]:
    """Check every input and output, then load the pair, then bench."""
    from bild.lab.bench import run_bench
    from bild.lab.calibrate import cost_model_for, read_cost_model
    from bild.lab.workload import Workload

    methods, fronts = bench_methods(options)
    given = read_cost_model(options)
    inputs = [options.prompts, options.cost_model, *options.from_front, options.small, options.large,
              options._source]
    check_bench_outputs(options, inputs)
    rank, size = world()
    sharded = size > 1 and options.large_tp is None  # ranks for the prompts (for a model: tensor parallel)
    if size > 1:
        start()
    if sharded:
        options = across_ranks(options)
    examples, pair = prepare(options, tests=options.execute_code)
    work = Workload(pair, examples, options.generation, chat=options.chat, system=options.system,
                    repeats=options.repeats, progress=rank == 0)
    work.check()  # the prompts' own checks (chat mode, every turn within the context), before calibrating
    methods += front_methods(fronts, pair)
    setup = {**identity(options, pair, examples), "device": str(pair.device).split(":")[0],
             "threads": options.threads, "fit_tolerance": options.fit_tolerance}
    if sharded:
        agree({**setup, "methods": [m.name for m in methods]}, "the setup")
        costs = share(cost_model_for(options, pair, given) if rank == 0 else None)
        report, results = bench_shard(work.priced(costs), methods, options, setup, inputs)
    else:  # one process, or the ranks of a tensor-parallel model decoding in lockstep (rank 0 writes)
        costs = cost_model_for(options, pair, given, share if size > 1 else lambda found: found)
        report, results = run_bench(work.priced(costs), methods, out=options.json_out if rank == 0 else None,
                                    setup=setup, inputs=inputs, overwrite=options.overwrite,
                                    context=context(options, pair), execute_code=options.execute_code)
    if rank == 0:  # rank 0 alone reports (its shard's rank wrote its own; a tensor-parallel rank only decoded)
        publish_bench(options, pair, report, examples, results)
    return report


def across_ranks(options: BenchOptions) -> BenchOptions:
    """A bench under torchrun: refused without a report to merge into; each rank on its own GPU."""
    size = world()[1]
    if not options.json_out:
        fail(f"a bench across {size} ranks needs --json OUT: each rank writes its shard beside it and rank 0 the "
             "merged report")
    return options.model_copy(update={"device": options.device or rank_device()})


def bench_shard(work: Any, methods: list[Any], options: BenchOptions, setup: dict[str, Any], inputs: list[Any]
                ) -> tuple[dict[str, Any], Any]:
    """This rank's shard of the workload, benched and written as a report of its own; on rank 0, every shard
    merged."""
    import dataclasses

    from bild.lab.bench import merge_shards, run_bench
    from bild.lab.report import samples_path

    pair, examples = work.pair, work.examples
    rank, size = world()
    if size > len(examples):
        fail(f"{size} ranks for {len(examples)} prompts: launch at most {len(examples)} ranks, or bench more prompts")
    mine = shard(len(examples), rank, size)
    out = shard_path(options.json_out, rank, size)
    error, report = None, None
    try:
        report, _ = run_bench(dataclasses.replace(work, examples=[examples[i] for i in mine]), methods, out=str(out),
                              setup={**setup, "rank": rank, "world_size": size}, inputs=inputs,
                              overwrite=options.overwrite, context=context(options, pair),
                              execute_code=options.execute_code)
    except BildError as e:
        error = str(e)
    settle(error)
    if rank != 0:
        return report, None
    shards = []
    for r in range(size):
        path = shard_path(options.json_out, r, size)
        records = [json.loads(line) for line in samples_path(path).read_text().splitlines() if line.strip()]
        shards.append((shard(len(examples), r, size), json.loads(path.read_text()), records))
    # the shards' own setup (schema, chat, system, repeats, policy code: what run_bench records), for the whole set
    ranked = {k: v for k, v in shards[0][1]["setup"].items() if k != "rank"}
    merged_setup = {**ranked, "world_size": size, "n": len(examples), "prompt_ids": [e.id for e in examples]}
    report, results = merge_shards(shards, methods, examples, work.costs, options.generation, merged_setup)
    report["context"] = context(options, pair)
    write_atomic(Path(options.json_out), json.dumps(report, indent=2) + "\n")
    return report, results


def run_name(kind: str, pair: Any, options: RunOptions) -> str:
    """`bench:<small>+<large>:<prompts>`, from the models as given (folder names or hub ids)."""
    models = "+".join(Path(name.rstrip("/")).name or name for name in (pair.small_name, pair.large_name))
    return f"{kind}:{models}:{options.task or Path(options.prompts or 'prompts').stem}"


def execute_tune(options: TuneOptions) -> dict[str, Any]:
    from bild.lab.calibrate import read_cost_model
    from bild.lab.tune import check_setup, format_front, run_tune

    if options.study is None:
        options = options.model_copy(update={"study": f"bild-{options.policy}-"
                                             f"{options.task or Path(options.prompts or 'prompts').stem}"})
    given = read_cost_model(options)
    check_setup(options, [options.prompts, options.cost_model, options.small, options.large, options._source])
    examples, pair = prepare(options)
    found = identity(options, pair, examples)
    report = run_tune(options, pair, examples, logger_for(options, options.study), setup=found,
                      context=context(options, pair), costs=given)
    print(f"study {report['study']}: {report['finished_trials']} finished trials; baseline "
          f"{report['baseline']['tokens_per_s']:.1f} tokens/s, {options.metric} "
          f"{report['baseline']['quality'][options.metric]}")
    print(format_front(report["front"]))
    if report["oracle_modelled_speedup"] is not None:  # the limit of the policy's own draft sources
        print(f"oracle over {'+'.join(report['oracle_sources'])} (modelled): {report['oracle_modelled_speedup']:.2f}x")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"front written to {Path(options.out_dir) / (report['study'] + '-front.json')}")
    return report


def execute(options: BenchOptions | TuneOptions) -> dict[str, Any]:
    return execute_bench(options) if isinstance(options, BenchOptions) else execute_tune(options)
