"""One Optuna study that workers share: its storage, sampler and setup, values computed once, the loop that
runs trials to the study's total, and the one confirmation of its front.

Workers started with the same command join one study (SQLite on a laptop, PostgreSQL across
machines). What they must agree on lives in the study: the setup (a resumed study refuses other
settings), values the first worker computes and stores (`shared_value`: the cost model, the
baseline, the oracle), and the confirmation, claimed by one worker while the others wait. What a
trial measures is bild/lab/tune.py's.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bild.errors import BildError
from bild.lab.options import TuneOptions
from bild.lab.space import SearchSpace

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTLE_SECONDS = 1.0  # how long a worker waits before reading back a value it stored
CONFIRM_WAIT_HEARTBEATS = 20  # a claim to confirm the front this many heartbeats old is taken over
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class SkippedTrial(Exception):
    """A trial beyond the study's total, or one that drew a parameter set the study already has."""


def check_objectives(options: TuneOptions) -> list[str]:
    """The Optuna directions, after refusing contradictory combinations."""
    objectives = options.objectives
    if len(set(objectives)) != len(objectives):
        raise BildError(f"--objectives {','.join(objectives)} lists an objective twice")
    if sorted(objectives) == ["quality", "speedup"]:
        if options.max_quality_drop is not None:
            raise BildError("--max-quality-drop constrains a single-objective search: use --objectives speedup "
                            "with it, or drop it for the speed-quality Pareto front")
        return ["maximize", "maximize"]
    if objectives == ["speedup"]:
        if options.max_quality_drop is None:
            raise BildError("--objectives speedup needs --max-quality-drop X, or the search trades all quality "
                            "for speed; use --objectives speedup,quality for a Pareto front")
        return ["maximize"]
    raise BildError(f"--objectives {','.join(objectives)}: use speedup,quality (Pareto) or speedup "
                    "(with --max-quality-drop)")


def open_storage(options: TuneOptions) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats and retries; workers starting together may race to create
    the schema, so a schema clash is retried."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happens, without tracebacks
    error: Exception | None = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                options.storage, heartbeat_interval=options.heartbeat, grace_period=2 * options.heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=options.max_retry),
                engine_kwargs=None if options.storage.startswith("sqlite") else {"pool_pre_ping": True},
            )
        except (IntegrityError, ProgrammingError) as e:
            error = e
            time.sleep(0.5 + attempt)
        except Exception as e:  # sqlalchemy and the drivers raise many types for "unreachable"
            error = e
            break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise BildError(f"cannot open the study storage {options.storage!r}: {first}") from error


def make_sampler(options: TuneOptions, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    single = len(options.objectives) == 1
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if options.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if options.sampler == "nsga2" and not single:
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=None)
    if options.sampler == "nsga2":
        raise BildError("--sampler nsga2 is a multi-objective sampler: use it with --objectives speedup,quality")
    if options.sampler == "gp":  # a Gaussian process: sample-efficient for a few thresholds and under 100 trials
        return optuna.samplers.GPSampler(seed=seed)  # reads the quality constraint each trial sets
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True)


def open_study(options: TuneOptions, storage: optuna.storages.RDBStorage, space: SearchSpace,
               setup: dict[str, Any]) -> optuna.Study:
    directions = check_objectives(options)
    pruner = optuna.pruners.WilcoxonPruner(p_threshold=0.1) if len(directions) == 1 else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=options.study, directions=directions,
                                    load_if_exists=True, pruner=pruner)
    except ValueError as e:
        raise BildError(f"study {options.study!r}: {e}") from e
    existing = study.user_attrs.get("setup")
    if existing is None:
        study.set_user_attr("setup", setup)
        study.set_metric_names(["speedup", options.metric][: len(directions)])
    elif existing != setup:
        diff = sorted(k for k in set(existing) | set(setup) if existing.get(k) != setup.get(k))
        if diff == ["policy_code"]:
            raise BildError(f"study {options.study!r} tuned other code of {options.policy!r} (its file has changed "
                            "since): pick another --study name to tune the edited policy, or restore the file to "
                            "resume it")
        raise BildError(f"study {options.study!r} exists with other settings ({', '.join(diff)} differ): "
                        "pick another --study name, or rerun with the study's settings to resume it")
    if [d.name.lower() for d in study.directions] != directions:
        raise BildError(f"study {options.study!r} exists with other objectives: pick another --study name")
    # a worker's own stream of samples: resuming or joining never replays the sampler's start
    seed = None if options.sampler_seed is None else (options.sampler_seed + len(study.trials)) % 2**32
    study.sampler = make_sampler(options, space, seed)
    return study


def shared_value(study: optuna.Study, storage: optuna.storages.BaseStorage, key: str, compute: Any) -> Any:
    """The study's value under `key`, computed and stored by the first worker that needs it.

    Workers that compute it at the same moment each store theirs, wait, and read back the one
    that stayed, so all of them use one value.
    """
    if key in study.user_attrs:
        return study.user_attrs[key]
    value = compute()
    if key not in optuna.load_study(study_name=study.study_name, storage=storage).user_attrs:
        study.set_user_attr(key, value)
        time.sleep(SETTLE_SECONDS)
    return optuna.load_study(study_name=study.study_name, storage=storage).user_attrs[key]


def progress_line(study: optuna.Study, total: int, metric: str):
    """After each trial: one line on stderr."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        q = (trial.user_attrs.get("quality") or {}).get(metric)
        print(f"[{finished}/{total}] trial {trial.number} {trial.state.name.lower()}: speedup "
              f"{trial.user_attrs.get('speedup', float('nan')):.2f}, {metric} {'-' if q is None else f'{q:.2f}'} "
              f"({params})", file=sys.stderr, flush=True)

    return callback


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], Any], options: TuneOptions,
               distinct: int | None) -> None:
    """Run trials until the study holds `options.trials` finished ones, or every one of the `distinct` settings of
    a small space (or this worker's timeout)."""
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    told = False
    while deadline is None or time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: FAIL, and a retry queued
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if finished >= options.trials:
            return
        if distinct is not None and finished >= distinct:
            print(f"study {study.study_name}: its space holds {distinct} distinct setting(s), all measured: stopping "
                  f"at {finished} of --trials {options.trials} (widen --space for more)", file=sys.stderr, flush=True)
            return
        if finished + running >= options.trials:
            if not told:
                print(f"study {study.study_name}: {finished}/{options.trials} finished; waiting for {running} "
                      f"trial(s) running elsewhere (a stopped worker's trial is retried once its heartbeat is "
                      f"{2 * options.heartbeat} s old)", file=sys.stderr, flush=True)
                told = True
            time.sleep(min(options.heartbeat, 5))
            continue
        told = False
        study.optimize(objective, n_trials=1, catch=(SkippedTrial,),
                       callbacks=[progress_line(study, options.trials, options.metric)])


def confirmation(study: optuna.Study, storage: optuna.storages.BaseStorage, options: TuneOptions,
                 measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The study's one confirmation of its front on the clock (what `measure` returns), and whether this worker
    made it.

    The first worker to get here claims it, measures and stores it; the others wait for it and read it,
    so every worker reports the same measured speedups. A claim older than its wait is taken over (its
    worker died).
    """
    def attrs() -> dict[str, Any]:
        return optuna.load_study(study_name=study.study_name, storage=storage).user_attrs

    me, patience = f"{socket.gethostname()}:{os.getpid()}", CONFIRM_WAIT_HEARTBEATS * options.heartbeat
    told = False
    while "confirmation" not in (found := attrs()):
        claim = found.get("confirming")
        if claim is None or time.time() - claim["at"] > patience:
            study.set_user_attr("confirming", {"by": me, "at": time.time()})
            time.sleep(SETTLE_SECONDS)
            claim = attrs()["confirming"]
        if claim["by"] == me:
            value = {"by": me, **measure()}
            study.set_user_attr("confirmation", value)
            return value, True
        if not told:
            print(f"study {study.study_name}: {claim['by']} is confirming the front on its clock; waiting for it",
                  file=sys.stderr, flush=True)
            told = True
        time.sleep(min(options.heartbeat, 2))
    return found["confirmation"], False
