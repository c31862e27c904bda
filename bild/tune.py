"""`bild tune`: an Optuna search over a policy's parameters, speed against quality.

- Search space: from the policy's pydantic bounds (bild/space.py), overridable.
- Objectives: `speedup,quality` (default) is a Pareto search whose front is `study.best_trials`;
  `speedup` alone maximises speed under `--max-quality-drop` (a constraint the sampler knows),
  with Optuna's `WilcoxonPruner` stopping hopeless trials early (one step per prompt).
- Baseline: the large model alone, measured once per study and machine (speedups are ratios of
  times on one machine) and stored in the study, so trials and workers never re-measure it.
- Storage: any SQLAlchemy URL. Workers started with the same command join one study
  (`load_if_exists`); `--trials N` is the study's total, counted as finished (complete or pruned)
  trials. A worker that finds the study full stops; two workers racing for the last slot record
  the loser as a FAIL trial with the user attribute `surplus` (never measured). Heartbeats mark a
  dead worker's trial failed and `RetryFailedTrialCallback` runs its parameters again.
- Every trial's metrics, parameters and sample generations are stored as user attributes as soon
  as it ends, so an interrupted study loses at most the trial in flight and resumes by rerunning
  the same command.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, Field

from bild.bench import Method, Samples, machine_info, measure, output_text, runner
from bild.config import GenerationConfig
from bild.engine import encode_prompt
from bild.errors import BildError
from bild.metrics import reference_metrics, token_agreement
from bild.pair import ModelPair
from bild.space import search_space
from bild.tasks import Example
from bild.wandb_log import WandbLogger
from policies import make_policy

Metric = Literal["chrf", "bleu", "rouge_l", "agreement"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SAMPLES_PER_TRIAL = 4


class TuneSettings(BaseModel):
    policy: str
    trials: int = Field(20, ge=1)
    study: str | None = None
    storage: str = "sqlite:///bild-tune.db"
    objectives: list[str] = ["speedup", "quality"]  # checked by `check_objectives`
    metric: Metric = "chrf"
    max_quality_drop: float | None = Field(None, ge=0)
    timeout: float | None = Field(None, gt=0)
    space: dict[str, str] = {}
    seed: int | None = None
    repeats: int = Field(1, ge=1)
    heartbeat_interval: int = Field(30, ge=1)
    grace_period: int | None = Field(None, ge=1)
    max_retry: int = Field(2, ge=0)
    wandb_per: Literal["trial", "study"] = "trial"


class SurplusTrial(Exception):
    """The study already holds (or is running) the requested number of trials."""


# --- study setup -------------------------------------------------------------------------------


def check_objectives(settings: TuneSettings) -> list[str]:
    """The Optuna directions, after refusing contradictory combinations."""
    objectives = settings.objectives
    if len(set(objectives)) != len(objectives):
        raise BildError(f"--objectives {','.join(objectives)} lists an objective twice")
    if objectives == ["speedup", "quality"] or objectives == ["quality", "speedup"]:
        if settings.max_quality_drop is not None:
            raise BildError("--max-quality-drop constrains a single-objective search: use --objectives speedup "
                            "with it, or drop it for the speed-quality Pareto front")
        return ["maximize", "maximize"]
    if objectives == ["speedup"]:
        if settings.max_quality_drop is None:
            raise BildError("--objectives speedup needs --max-quality-drop X, or the search trades all quality "
                            "for speed; use --objectives speedup,quality for a Pareto front")
        return ["maximize"]
    raise BildError(f"--objectives {','.join(objectives)}: use speedup,quality (Pareto) or speedup "
                    "(with --max-quality-drop)")


def open_storage(settings: TuneSettings) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats and retries; workers starting together may race to create
    the schema, so a schema clash is retried."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    attempts = 5
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                settings.storage, heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period or 2 * settings.heartbeat_interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=settings.max_retry),
                engine_kwargs=None if settings.storage.startswith("sqlite") else {"pool_pre_ping": True},
            )
        except (IntegrityError, ProgrammingError) as e:
            error = e
            time.sleep(0.5 + attempt)
        except Exception as e:  # sqlalchemy and the drivers raise many types for "unreachable"
            error = e
            break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise BildError(f"cannot open the study storage {settings.storage!r}: {first}") from error


def open_study(settings: TuneSettings, fingerprint: dict[str, Any]) -> optuna.Study:
    directions = check_objectives(settings)
    storage = open_storage(settings)
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=5)
    pruner = optuna.pruners.WilcoxonPruner(p_threshold=0.1) if len(directions) == 1 else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=settings.study, directions=directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except ValueError as e:
        raise BildError(f"study {settings.study!r}: {e}") from e
    existing = study.user_attrs.get("setup")
    if existing is None:
        study.set_user_attr("setup", fingerprint)
    elif existing != fingerprint:
        diff = sorted(k for k in set(existing) | set(fingerprint) if existing.get(k) != fingerprint.get(k))
        raise BildError(f"study {settings.study!r} exists with other settings ({', '.join(diff)} differ): "
                        "pick another --study name, or rerun with the study's settings to resume it")
    if [d.name.lower() for d in study.directions] != directions:
        raise BildError(f"study {settings.study!r} exists with other objectives: pick another --study name")
    return study


# --- measuring ---------------------------------------------------------------------------------


class Measured(BaseModel):
    tokens_per_s: float
    quality: dict[str, float | None]
    seconds: list[float]
    tokens: list[list[int]]


def quality_of(samples: Samples, examples: list[Example],
               baseline_tokens: list[list[int]] | None) -> dict[str, float | None]:
    quality = reference_metrics(samples.texts, [e.reference for e in examples])
    quality["agreement"] = token_agreement(samples.tokens, baseline_tokens) if baseline_tokens else 1.0
    return quality


def machine_key(pair: ModelPair) -> str:
    info = machine_info(pair)
    return f"baseline@{socket.gethostname()}/{info.get('gpu', info['processor'])}/{info['dtype']}"


def baseline(study: optuna.Study, pair: ModelPair, examples: list[Example], prompts: list[list[int]],
             config: GenerationConfig, repeats: int) -> Measured:
    """The large model alone on this machine: read from the study, or measured once and stored."""
    key = machine_key(pair)
    if key in study.user_attrs:
        return Measured(**study.user_attrs[key])
    run = runner(pair, Method(name="large"), config)
    run(prompts[0])  # warm-up
    samples = Samples()
    for ids in prompts:
        seconds, tokens, _ = measure(run, ids, repeats)
        samples.add(seconds, tokens, output_text(pair, tokens, config), None)
    measured = Measured(tokens_per_s=samples.tokens_per_s, quality=quality_of(samples, examples, None),
                        seconds=samples.seconds, tokens=samples.tokens)
    if key not in study.user_attrs:  # re-read: another worker may have stored it meanwhile
        study.set_user_attr(key, measured.model_dump())
    return measured


# --- the objective -----------------------------------------------------------------------------


def finished_or_running_before(study: optuna.Study, number: int) -> int:
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.state in FINISHED or t.number < number for t in trials if t.number != number)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


class Objective:
    def __init__(self, settings: TuneSettings, pair: ModelPair, examples: list[Example], prompts: list[list[int]],
                 config: GenerationConfig, base: Measured, logger: WandbLogger) -> None:
        from policies import policy_class

        self.settings, self.pair, self.examples, self.prompts = settings, pair, examples, prompts
        self.config, self.base, self.logger = config, base, logger
        self.cls = policy_class(settings.policy)
        self.space, self.fixed = search_space(self.cls, settings.space)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if finished_or_running_before(trial.study, trial.number) >= self.settings.trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial
        params = {name: suggest(trial, name, dist) for name, dist in self.space.items()} | self.fixed
        policy = make_policy(self.settings.policy, params)
        run = runner(self.pair, Method(name=self.settings.policy, policy=policy), self.config)
        run(self.prompts[0])  # warm-up
        samples = Samples()
        single = len(self.settings.objectives) == 1
        for step, ids in enumerate(self.prompts):
            seconds, tokens, stats = measure(run, ids, self.settings.repeats)
            samples.add(seconds, tokens, output_text(self.pair, tokens, self.config), stats)
            if single:  # per-prompt speedup against the baseline's time on the same prompt
                trial.report(self.base.seconds[step] / max(seconds, 1e-9) * len(tokens)
                             / max(len(self.base.tokens[step]), 1), step)
                if trial.should_prune():
                    self.record(trial, params, samples, pruned=True)
                    raise optuna.TrialPruned
        return self.record(trial, params, samples, pruned=False)

    def record(self, trial: optuna.Trial, params: dict[str, Any], samples: Samples, pruned: bool):
        done = len(samples.tokens)
        quality = quality_of(samples, self.examples[:done], self.base.tokens[:done])
        base_quality = self.base.quality[self.settings.metric] if not pruned else None
        value = quality[self.settings.metric]
        speedup = samples.tokens_per_s / self.base.tokens_per_s
        attrs = {"params": params, "speedup": speedup, "tokens_per_s": samples.tokens_per_s, "quality": quality,
                 "quality_drop": (base_quality - value) if base_quality is not None else None,
                 "prompts_done": done}
        generations = [{"id": e.id, "method": self.settings.policy, "prompt": e.prompt, "text": t,
                        "reference": e.reference} for e, t in zip(self.examples, samples.texts, strict=False)]
        for key, val in (attrs | {"samples": generations[:SAMPLES_PER_TRIAL]}).items():
            trial.set_user_attr(key, val)
        limit = self.settings.max_quality_drop
        if limit is not None:  # feasible when <= 0; the sampler learns it
            drop = attrs["quality_drop"]
            trial.set_constraint("quality_drop", float("inf") if drop is None else drop - limit)
        if self.settings.wandb_per == "trial":
            self.logger.log_run(f"{trial.study.study_name}-trial-{trial.number}", job_type="tune-trial",
                                config={"policy": self.settings.policy, **params, "study": trial.study.study_name},
                                summary={**attrs, "pruned": pruned}, samples=generations)
        if len(self.settings.objectives) == 1:
            return speedup
        return speedup, value


def stop_when_full(total: int, metric: str):
    """After each trial: one progress line on stderr; stop once the study holds `total`."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if trial.state in FINISHED:
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
            quality = (trial.user_attrs.get("quality") or {}).get(metric)
            print(f"[{finished}/{total}] trial {trial.number} {trial.state.name.lower()}: speedup "
                  f"{trial.user_attrs.get('speedup', float('nan')):.2f}, {metric} "
                  f"{'-' if quality is None else f'{quality:.2f}'} ({params})", file=sys.stderr, flush=True)
        if finished >= total:
            study.stop()

    return callback


# --- results -----------------------------------------------------------------------------------


def front(study: optuna.Study, settings: TuneSettings) -> list[FrozenTrial]:
    """The Pareto front (two objectives) or the fastest trial within the quality constraint."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(settings.objectives) == 2:
        return sorted(study.best_trials, key=lambda t: t.values[0])
    feasible = [t for t in complete if t.user_attrs["quality_drop"] <= settings.max_quality_drop]
    return sorted(feasible, key=lambda t: -t.values[0])[:1]


def front_rows(trials: list[FrozenTrial], metric: str) -> list[dict[str, Any]]:
    return [{"trial": t.number, "speedup": t.user_attrs["speedup"], metric: t.user_attrs["quality"][metric],
             "quality_drop": t.user_attrs.get("quality_drop"), **t.user_attrs["params"]} for t in trials]


def format_front(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no finished trial yet"
    keys = list(rows[0])
    cells = [[k for k in keys]] + [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
                                   for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def plot_front(study: optuna.Study, rows: list[dict[str, Any]], metric: str, path: Path,
               baseline_quality: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([t.user_attrs["speedup"] for t in trials], [t.user_attrs["quality"][metric] for t in trials],
               s=14, color="0.6", label="trials")
    ax.plot([r["speedup"] for r in rows], [r[metric] for r in rows], "o-", color="C3", label="Pareto front")
    if baseline_quality is not None:
        ax.scatter([1.0], [baseline_quality], marker="*", s=120, color="C0", label="large alone")
    ax.set_xlabel("speedup vs large alone")
    ax.set_ylabel(metric)
    ax.set_title(study.study_name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command ---------------------------------------------------------------------------------


def run_tune(settings: TuneSettings, pair: ModelPair, examples: list[Example], config: GenerationConfig,
             fingerprint: dict[str, Any], logger: WandbLogger, out_dir: str | Path = ".") -> dict[str, Any]:
    """Join (or create) the study, run trials until it holds `settings.trials`, report its front."""
    from policies import policy_class

    search_space(policy_class(settings.policy), settings.space)  # fail fast on a policy with no knobs
    if settings.metric != "agreement" and any(e.reference is None for e in examples):
        raise BildError(f"--metric {settings.metric} needs a reference for every prompt; "
                        "use --metric agreement (agreement with the large model) for prompts without")
    fingerprint = {**fingerprint, **settings.model_dump(include={"policy", "objectives", "metric",
                                                                  "max_quality_drop", "space"})}
    study = open_study(settings, fingerprint)
    prompts = [encode_prompt(pair, e.prompt, config.max_new_tokens) for e in examples]
    base = baseline(study, pair, examples, prompts, config, settings.repeats)
    objective = Objective(settings, pair, examples, prompts, config, base, logger)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < settings.trials:
        study.optimize(objective, timeout=settings.timeout, catch=(SurplusTrial,),
                       callbacks=[stop_when_full(settings.trials, settings.metric)])
    rows = front_rows(front(study, settings), settings.metric)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    report = {"study": study.study_name, "storage": settings.storage, "policy": settings.policy,
              "objectives": settings.objectives, "metric": settings.metric, "finished_trials": finished,
              "baseline": {"tokens_per_s": base.tokens_per_s, "quality": base.quality}, "front": rows,
              "machine": machine_info(pair), "settings": settings.model_dump(), "setup": fingerprint}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{study.study_name}-front"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        plot_front(study, rows, settings.metric, stem.with_suffix(".png"), base.quality.get(settings.metric))
    tables = {"pareto_front": (list(rows[0]), [list(r.values()) for r in rows])} if rows else {}
    if settings.wandb_per == "study":
        trials = front_rows(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), settings.metric)
        if trials:
            tables["trials"] = (list(trials[0]), [list(r.values()) for r in trials])
    logger.log_run(f"{study.study_name}-summary", job_type="tune-summary", config=report["settings"],
                   summary={"finished_trials": finished, "baseline": report["baseline"]}, tables=tables)
    return report
