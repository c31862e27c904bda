"""Running a bench or a tune from validated options, whether they came from flags or a YAML file.

`bild run CONFIG.yaml` loads a file such as experiments/pycode_tune.yaml (`command: bench` or
`command: tune`, then the options of that command) and runs it exactly as the command line
would; the options are logged with the results (report JSON, study attributes, W&B config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from bild.errors import BildError
from bild.options import BenchOptions, Experiment, Options, TuneOptions
from bild.wandb_log import WandbLogger

# --- loading ---------------------------------------------------------------------------------


def describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"] if p not in ("bench", "tune"))
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def load_experiment(path: str | Path) -> BenchOptions | TuneOptions:
    """A validated experiment from a YAML file; errors name the file and the field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BildError(f"experiment config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BildError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict) or data.get("command") not in ("bench", "tune"):
        raise BildError(f"{path}: needs `command: bench` or `command: tune` at the top level")
    data.pop("description", None)
    try:
        return TypeAdapter(Experiment).validate_python(data)
    except ValidationError as e:
        raise BildError(f"{path}: {describe(e)}") from e


# --- running ---------------------------------------------------------------------------------


def quiet_transformers() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def load_pair(options: Options):
    from bild.pair import ModelPair
    from bild.presets import resolve_pair

    small, large = resolve_pair(options.pair, options.small, options.large)
    quiet_transformers()
    return ModelPair.from_pretrained(small, large, device=options.device, dtype=options.dtype)


def generation_config(options: Options):
    from bild.config import GenerationConfig

    return GenerationConfig(max_new_tokens=options.max_new_tokens, max_draft_tokens=options.max_draft_tokens,
                            stop_strings=options.stop, temperature=options.temperature, top_k=options.top_k,
                            top_p=options.top_p, seed=options.seed)


def setup_fingerprint(options: Options, pair) -> dict[str, Any]:
    """What must not change for results to stay comparable (checked when a study is resumed)."""
    return {"small": pair.small_name, "large": pair.large_name, "prompts": options.prompts, "task": options.task,
            "n": options.n, "max_new_tokens": options.max_new_tokens, "max_draft_tokens": options.max_draft_tokens,
            "stop": options.stop, "temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p,
            "dtype": str(pair.dtype).removeprefix("torch.")}


def execute_bench(options: BenchOptions) -> dict[str, Any]:
    from bild.bench import format_table, parse_methods, plot, run_bench
    from bild.tasks import load_examples

    if options.threads:
        torch.set_num_threads(options.threads)
    methods = parse_methods(options.methods, {k: str(v) for k, v in options.params.items()})
    config = generation_config(options)
    examples = load_examples(options.prompts, options.task, options.n)
    pair = load_pair(options)
    run_config = {**options.model_dump(), "small": pair.small_name, "large": pair.large_name}
    report, samples = run_bench(pair, examples, methods, config, repeats=options.repeats, out=options.json_out,
                                run_config=run_config)
    print(format_table(report))
    if options.plot:
        plot(report, options.plot)
    WandbLogger(options.wandb_mode, options.wandb_project, group="bench", directory=options.wandb_dir).log_run(
        f"bench-{Path(pair.large_name).name}", job_type="bench", config={**report["config"], **report["machine"]},
        summary={"methods": report["methods"], "memory": report.get("memory", {})},
        samples=[{"id": e.id, "method": name, "prompt": e.prompt, "text": text, "reference": e.reference}
                 for name, s in samples.items() for e, text in zip(examples, s.texts, strict=False)])
    return report


def execute_tune(options: TuneOptions) -> dict[str, Any]:
    from bild.tasks import load_examples
    from bild.tune import TuneSettings, format_front, run_tune

    if options.threads:
        torch.set_num_threads(options.threads)
    config = generation_config(options)
    examples = load_examples(options.prompts, options.task, options.n)
    objectives = [o.strip() for o in options.objectives.split(",") if o.strip()]
    study = options.study or f"bild-{options.policy}-{options.task or Path(options.prompts or 'prompts').stem}"
    settings = TuneSettings(policy=options.policy, trials=options.trials, study=study, storage=options.storage,
                            objectives=objectives, metric=options.metric, max_quality_drop=options.max_quality_drop,
                            timeout=options.timeout, space=options.space, seed=options.seed, repeats=options.repeats,
                            wandb_per=options.wandb_per, heartbeat_interval=options.heartbeat)
    pair = load_pair(options)
    logger = WandbLogger(options.wandb_mode, options.wandb_project, group=study, directory=options.wandb_dir)
    report = run_tune(settings, pair, examples, config, setup_fingerprint(options, pair), logger,
                      out_dir=options.out_dir)
    print(f"study {report['study']}: {report['finished_trials']} finished trials; baseline "
          f"{report['baseline']['tokens_per_s']:.1f} tokens/s, {options.metric} "
          f"{report['baseline']['quality'][options.metric]}")
    print(format_front(report["front"]))
    print(f"front written to {Path(options.out_dir) / (report['study'] + '-front.json')}")
    return report


def execute(options: BenchOptions | TuneOptions) -> dict[str, Any]:
    return execute_bench(options) if isinstance(options, BenchOptions) else execute_tune(options)
