"""`bild tune`: an Optuna search over a policy's parameters, speed against quality.

- Space: from the policy's parameters, define-by-run (bild/lab/space.py); `--space` narrows it.
- Speed: `--objective modelled` (default) scores a trial's speedup over the large model alone
  with the study's cost model (bild/costs.py) from the engine's pass counts: deterministic for
  greedy decoding, so a study is reproducible and workers on different machines can share it.
  `measured` uses the wall clock. Either way the best trials are re-measured on the clock at
  the end, side by side with the large model (`--confirm K`), and both figures are reported.
- Objectives: `speedup,quality` (default) is a Pareto search whose front is `study.best_trials`;
  `speedup` alone maximises speed under `--max-quality-drop` (a constraint the sampler knows),
  with Optuna's `WilcoxonPruner` stopping hopeless trials early (one step per prompt).
- Shared state lives in the study (bild/lab/study.py): the setup (a resumed study refuses other
  settings), the cost model (calibrated by the first worker, or `--cost-model FILE`), the baseline
  (one per study for the modelled objective, per study and machine for the measured one), the
  confirmation of the front. Every worker uses the stored values, never its own.
- Workers started with the same command join one study; `--trials N` is the study's total of
  finished trials. No parameter set is evaluated twice: each worker seeds its sampler from the
  seed and the trials present when it starts, and a trial that draws a set the study already has
  is skipped (a FAIL trial with the user attribute `duplicate_of`), as is one beyond the total
  (`surplus`). A dead worker's trial is retried once its heartbeat is stale; a worker that finds
  trials running elsewhere says so and waits for them, so the study always reaches its total.
- Every trial's parameters, metrics, engine statistics and samples are stored as user
  attributes as soon as it ends, so an interrupted study loses at most the trial in flight.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bild.costs import CostModel
from bild.errors import BildError, unknown_name
from bild.files import write_atomic
from bild.lab.chat import Conversation
from bild.lab.identity import machine_info, policy_origin
from bild.lab.measure import Measurement, Results, measure
from bild.lab.methods import Method
from bild.lab.options import TuneOptions
from bild.lab.oracle import accepted_runs, oracle_of_sources, teach
from bild.lab.outputs import FRONT, PLOT, check_output
from bild.lab.render import columns, figure, fmt, table
from bild.lab.space import SearchSpace
from bild.lab.study import (
    FINISHED,
    STUDY_NAME,
    SkippedTrial,
    check_objectives,
    confirmation,
    open_storage,
    open_study,
    run_trials,
    shared_value,
)
from bild.lab.summary import policy_stats, quality, speedup, summarize, tokens_per_second
from bild.lab.tasks import Example
from bild.lab.wandb_log import WandbLogger
from bild.lab.workload import Workload
from bild.pair import ModelPair

SAMPLES_PER_TRIAL = 4


# --- checks before anything is measured ---------------------------------------------------------------


def check_setup(options: TuneOptions, inputs: list[str | None] = ()) -> Path:
    """Everything that can be refused before a model loads; the front's path stem."""
    from policies import policy_class

    check_objectives(options)
    if options.objective == "efficiency" and not options.generation.greedy:
        raise BildError("--objective efficiency needs greedy decoding (the oracle is greedy only): drop --temperature, "
                        "or use --objective modelled")
    SearchSpace(policy_class(options.policy), options.space, options.generation.greedy)
    if not STUDY_NAME.fullmatch(options.study or ""):
        raise BildError(f"study name {options.study!r} must be letters, digits, '.', '_' or '-' (it names files): "
                        "e.g. --study pycode-bild")
    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise BildError(f"--out-dir {options.out_dir!r} is a file: give a folder")
    stem = check_output(out / f"{options.study}-front.json", [options.prompts, *inputs], FRONT).with_suffix("")
    check_output(stem.with_suffix(".png"), [options.prompts, *inputs], PLOT)
    return stem


def check_examples(options: TuneOptions, examples: list[Example]) -> None:
    if options.metric != "agreement" and any(e.reference is None for e in examples):
        raise BildError(f"--metric {options.metric} needs a reference for every prompt; "
                        "use --metric agreement (agreement with the large model) for prompts without")


# --- measuring ---------------------------------------------------------------------------------------


class Objective:
    """One worker's objective: what every trial is measured and scored against."""

    def __init__(self, options: TuneOptions, work: Workload, space: SearchSpace, study: optuna.Study,
                 base: list[Measurement], logger: WandbLogger, setup: dict[str, Any],
                 oracle_seconds: list[float] | None = None) -> None:
        self.options, self.work, self.space, self.study = options, work, space, study
        self.base, self.logger, self.setup = base, logger, setup
        self.base_quality = quality(base, work.examples, base)
        self.oracle_seconds = oracle_seconds  # per prompt, the oracle's modelled time (greedy, modelled pricing)
        self.said_lossy = False  # the note on lossy trials under --objective efficiency, once per worker

    def efficiency(self, done: list[Measurement], start: int = 0) -> float | None:
        """Modelled speedup over the oracle's on the same prompts (`done` begins at prompt `start`)."""
        if self.oracle_seconds is None:
            return None
        prompts = range(start, start + len(done))
        oracle_time, base_time = (sum(self.oracle_seconds[i] for i in prompts),
                                  sum(self.work.costs.seconds(self.base[i].stats) for i in prompts))
        return speedup(done, self.base[start: start + len(done)], self.work.costs) / (base_time / oracle_time)

    def score(self, done: list[Measurement], start: int = 0) -> float:
        """The speed objective: modelled or measured speedup, or efficiency against the oracle."""
        if self.options.objective == "efficiency":
            return self.efficiency(done, start)
        return speedup(done, self.base[start: start + len(done)], self.work.costs)

    def method(self, params: dict[str, Any]) -> Method:
        from policies import make_policy

        return Method(name=self.options.policy, policy=make_policy(self.options.policy, params))

    def others(self, trial: optuna.Trial) -> list[FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                if t.number != trial.number]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if sum(t.state in FINISHED or t.number < trial.number for t in self.others(trial)) >= self.options.trials:
            trial.set_user_attr("surplus", True)
            raise SkippedTrial
        params = self.space.suggest(trial)
        # Announce the set, then look, and give way to any twin: of two workers that drew one set at
        # once, at least one sees the other's announcement, so they never both measure it.
        key = json.dumps(sorted(trial.params.items()))
        trial.set_user_attr("params_key", key)
        twin = next((t.number for t in self.others(trial) if t.user_attrs.get("params_key") == key), None)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin)
            raise SkippedTrial
        single = len(self.options.objectives) == 1

        def report_prompt(i: int, results: Results) -> None:
            if single:  # per-prompt speedup: the pruner's steps
                trial.report(self.score(results[self.options.policy][i: i + 1], i), i)
                if trial.should_prune():
                    raise optuna.TrialPruned

        results: Results = {self.options.policy: []}
        try:
            results = measure(self.work, [self.method(params)],
                              on_prompt=lambda i, r: (results.update(r), report_prompt(i, r)))
        except optuna.TrialPruned:
            self.record(trial, params, results[self.options.policy], pruned=True)
            raise
        return self.record(trial, params, results[self.options.policy], pruned=False)

    def record(self, trial: optuna.Trial, params: dict[str, Any], done: list[Measurement], pruned: bool):
        base = self.base[: len(done)]
        q = quality(done, self.work.examples, base)
        metric = self.options.metric
        value = q[metric]
        drop = None if pruned else self.base_quality[metric] - value
        stats = policy_stats([m.stats for m in done])
        lossy = q["exact_match"] is not None and q["exact_match"] < 1
        if lossy and self.options.objective == "efficiency" and not self.said_lossy:
            print(f"note: trial {trial.number}'s output differs from the large model's (lossy): --objective efficiency "
                  "scores it against the lossless oracle all the same, so its efficiency is speed over the oracle's "
                  "and can exceed 1 (the front's `lossy` column says which trials)", file=sys.stderr, flush=True)
            self.said_lossy = True
        attrs = {"params": self.method(params).policy.params(), "speedup": speedup(done, base, self.work.costs),
                 "efficiency": self.efficiency(done), "lossy": lossy,
                 "measured_speedup": speedup(done, base),
                 "tokens_per_s": tokens_per_second(done), "quality": q, "quality_drop": drop, "prompts_done": len(done),
                 "stats": {k: stats[k] for k in ("fallback_rate", "rollback_rate", "acceptance_rate",
                                                 "large_calls_per_token", "mean_accepted_tokens")}}
        samples = [{"id": e.id, "method": self.options.policy, "prompt": e.prompt, "text": m.text,
                    "reference": e.reference} for e, m in zip(self.work.examples, done, strict=False)]
        for key, val in (attrs | {"samples": samples[:SAMPLES_PER_TRIAL]}).items():
            trial.set_user_attr(key, val)
        if self.options.max_quality_drop is not None:  # feasible when <= 0; the sampler learns it
            trial.set_constraint("quality_drop", float("inf") if drop is None else drop - self.options.max_quality_drop)
        if self.options.wandb_per == "trial":
            self.logger.log_run(f"trial-{trial.number}:{self.options.policy}", job_type="tune-trial",
                                config={**self.setup, "trial": trial.number, "params": attrs["params"]},
                                summary={**attrs, "pruned": pruned}, samples=samples)
        score = self.score(done)
        return score if len(self.options.objectives) == 1 else (score, value)


# --- running -----------------------------------------------------------------------------------------


def front(study: optuna.Study, options: TuneOptions) -> list[FrozenTrial]:
    """The Pareto front (two objectives) or the fastest trial within the quality constraint."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(options.objectives) == 2:
        return sorted(study.best_trials, key=lambda t: t.values[0])
    feasible = [t for t in complete if t.user_attrs["quality_drop"] <= options.max_quality_drop]
    return sorted(feasible, key=lambda t: -t.values[0])[:1]


def front_rows(trials: list[FrozenTrial], metric: str, space: SearchSpace | None = None) -> list[dict[str, Any]]:
    """One row per trial: its scores and the parameters that applied to it (a threshold of a rule the trial
    did not use is left out: it was never searched there)."""
    rows = []
    for t in trials:
        params = t.user_attrs["params"]
        used = {k: v for k, v in params.items() if space is None or k not in space.params or space.applies(k, params)}
        rows.append({"trial": t.number, "speedup": t.user_attrs["speedup"], metric: t.user_attrs["quality"][metric],
                     "quality_drop": t.user_attrs.get("quality_drop"), "lossy": t.user_attrs.get("lossy"), **used})
    return rows


def beats_baseline(row: dict[str, Any]) -> bool:
    """Whether the large model alone, a point of every study (speedup 1, no quality drop), leaves the trial on
    the front: it does unless the trial is no faster and no better (then the baseline dominates it)."""
    return row["speedup"] > 1.0 or (row["quality_drop"] or 0.0) < 0.0


def final_front(study: optuna.Study, options: TuneOptions, space: SearchSpace | None = None
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(front, dominated): the front's rows that beat the large model alone, and those it dominates."""
    rows = front_rows(front(study, options), options.metric, space)
    return [r for r in rows if beats_baseline(r)], [{**r, "dominated": True} for r in rows if not beats_baseline(r)]


def confirm(objective: Objective, rows: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """Measured speedups of the `count` fastest front trials, side by side with the large model, and the machine."""
    best = sorted(rows, key=lambda r: -r["speedup"])[:count]
    keys = list(objective.space.params)
    methods = [Method(name="large")] + [
        objective.method({k: r[k] for k in keys if k in r}).model_copy(update={"name": f"trial-{r['trial']}"})
        for r in best]
    rows_measured = summarize(methods, measure(objective.work, methods), objective.work.examples)
    return {"machine": machine_info(objective.work.pair),
            "measured_speedup": {str(r["trial"]): rows_measured[f"trial-{r['trial']}"]["speedup_vs_large"]
                                 for r in best}}


def format_front(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no finished trial yet"
    keys, values = columns(rows)
    return table(keys, [[fmt(v, ".3f") if isinstance(v, float) else fmt(v) for v in row] for row in values], left=0)


def plot_front(study: optuna.Study, rows: list[dict[str, Any]], dominated: list[dict[str, Any]], metric: str,
               path: Path, baseline_quality: float | None, oracle_speedup: float | None = None) -> None:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def draw(ax: Any) -> None:
        ax.scatter([t.user_attrs["speedup"] for t in trials], [t.user_attrs["quality"][metric] for t in trials],
                   s=14, color="0.6", label="trials")
        ax.plot([r["speedup"] for r in rows], [r[metric] for r in rows], "o-", color="C3", label="Pareto front")
        if dominated:
            ax.scatter([r["speedup"] for r in dominated], [r[metric] for r in dominated], s=40, facecolors="none",
                       edgecolors="C3", label="dominated by large alone")
        if baseline_quality is not None:
            ax.scatter([1.0], [baseline_quality], marker="*", s=120, color="C0", label="large alone")
        if oracle_speedup is not None:
            ax.axvline(oracle_speedup, color="C2", ls="--", label=f"oracle, lossless ({oracle_speedup:.2f}x)")
        ax.set_xlabel("speedup vs large alone")
        ax.set_ylabel(metric)
        ax.set_title(study.study_name, fontsize=9)
        ax.legend(fontsize=8)

    figure(str(path), draw, size=(6.5, 4.5))


def oracle_of(pair: ModelPair, talks: list[Conversation], base: list[Measurement], options: TuneOptions,
              costs: CostModel | None, sources: tuple[str, ...]) -> list[float] | None:
    """The modelled seconds per prompt of the oracle over the policy's draft `sources`, along the baseline's
    outputs, turn by turn on the prompts the baseline saw (greedy decoding, a cost model)."""
    if costs is None or not options.generation.greedy:
        return None
    found = []
    for talk, m in zip(talks, base, strict=True):
        turns = teach(pair, talk.turn_prompts(m.answers), m.tokens, m.turns)
        found.append(sum(oracle_of_sources(t, accepted_runs(t["matches"]), sources, options.generation.draft_cap(),
                                           costs) for t in turns))
    return found


def sources_of(options: TuneOptions, space: SearchSpace) -> tuple[str, ...]:
    """The draft sources the tuned policy uses with its defaults and fixed values: its oracle is the one over them,
    the same for every trial (a trial that leaves a source unused is scored below it, not against a lower limit)."""
    from policies import make_policy

    policy = make_policy(options.policy, space.fixed)
    return Method(name=options.policy, policy=policy).sources or ("small",)


def machine_key(pair: ModelPair) -> str:
    info = machine_info(pair)
    return f"baseline@{socket.gethostname()}/{info.get('gpu', info['processor'])}/{info['dtype']}"


@dataclass
class Tuning:
    """One worker's side of a study: where its front goes, the study and its storage, what is searched and what
    the setup records."""

    options: TuneOptions
    stem: Path  # the front's path without its suffix
    storage: Any
    study: optuna.Study
    space: SearchSpace
    sources: tuple[str, ...]  # the tuned policy's draft sources: its oracle is the one over them
    origin: dict[str, Any]  # the policy's code, as identity.policy_origin records it
    setup: dict[str, Any]


def open_tuning(options: TuneOptions, pair: ModelPair, examples: list[Example], logger: WandbLogger,
                setup: dict[str, Any], context: dict[str, Any] | None, costs: CostModel | None
                ) -> tuple[Tuning, Objective]:
    """Join (or create) the study and read (or make) what its workers share: cost model, baseline, oracle."""
    from bild.lab.calibrate import cost_model_for, read_cost_model
    from policies import policy_class

    space = SearchSpace(policy_class(options.policy), options.space, options.generation.greedy)
    stem = check_setup(options)
    check_examples(options, examples)
    given = costs if costs is not None else read_cost_model(options)  # --cost-model, also through the API
    origin = policy_origin(policy_class(options.policy))
    setup = {**setup, **options.model_dump(include={"policy", "objectives", "objective", "metric",
                                                      "max_quality_drop", "space", "chat", "system"}),
             "policy_code": origin.get("code")}  # trials of edited code don't mix
    # a prompt that cannot run (or a chat mode the tokenizer cannot honour) is refused before a study is touched
    work = Workload(pair, examples, options.generation, chat=options.chat, system=options.system,
                    repeats=options.repeats, progress=False)
    talks = work.talks
    storage = open_storage(options)
    study = open_study(options, storage, space, setup)
    costs = None
    if options.objective != "measured":
        costs = CostModel(**shared_value(study, storage, "cost_model",
                                         lambda: cost_model_for(options, pair, given).model_dump()))
    key = "baseline" if options.objective != "measured" else machine_key(pair)
    base = [Measurement(**m) for m in shared_value(study, storage, key, lambda: [
        m.model_dump() for m in measure(work, [Method(name="large")])["large"]])]
    sources = sources_of(options, space)
    oracle_seconds = shared_value(study, storage, "oracle", lambda: oracle_of(pair, talks, base, options, costs,
                                                                                sources))
    tuning = Tuning(options, stem, storage, study, space, sources, origin, setup)
    return tuning, Objective(options, work.priced(costs), space, study, base, logger, {**setup, **(context or {})},
                             oracle_seconds)


def front_report(tuning: Tuning, objective: Objective, pair: ModelPair) -> tuple[dict[str, Any], bool]:
    """The study's front (confirmed on the clock when asked), its baseline and oracle, and what was set; whether
    this worker confirmed it (the one that writes it)."""
    options, study, costs, base = tuning.options, tuning.study, objective.work.costs, objective.base
    kept, dominated = final_front(study, options, tuning.space)
    confirmed, here = (confirmation(study, tuning.storage, options, lambda: confirm(objective, kept, options.confirm))
                       if kept and options.confirm else ({}, True))
    for r in kept:
        r["measured_speedup"] = confirmed.get("measured_speedup", {}).get(str(r["trial"]))
    notes = []
    if not kept:
        notes.append("no trial beats the large model alone: widen the space or check the pair's agreement")
    if dominated:
        notes.append(f"{len(dominated)} trial(s) of the Pareto front lose to the large model alone (trials "
                     f"{', '.join(str(r['trial']) for r in dominated)}): left out of the front, kept under 'dominated'")
    oracle_seconds = objective.oracle_seconds
    oracle_speedup = None if oracle_seconds is None else sum(costs.seconds(m.stats) for m in base) / sum(
        oracle_seconds)
    return {"study": study.study_name, "storage": options.storage, "policy": options.policy,
            "oracle_modelled_speedup": oracle_speedup, "oracle_sources": list(tuning.sources),
            "policy_origin": tuning.origin,
            "objectives": options.objectives, "objective": options.objective, "metric": options.metric,
            "finished_trials": len(study.get_trials(deepcopy=False, states=FINISHED)),
            "baseline": {"tokens_per_s": tokens_per_second(base), "quality": objective.base_quality},
            "front": kept, "dominated": dominated, "confirmed_by": confirmed.get("by"), "notes": notes,
            "machine": confirmed.get("machine") or machine_info(pair), "options": options.model_dump(),
            "setup": tuning.setup, "cost_model": costs.model_dump() if costs else None}, here


def publish_front(tuning: Tuning, objective: Objective, report: dict[str, Any], here: bool, logger: WandbLogger
                  ) -> None:
    """Write the front and its plot (one worker writes them; the others only where they are missing: the same
    front) and log the study's summary run."""
    kept, dominated = report["front"], report["dominated"]
    path = tuning.stem.with_suffix(".json")
    if here or not path.exists():
        write_atomic(path, json.dumps(report, indent=2) + "\n")
        if kept or dominated:
            plot_front(tuning.study, kept, dominated, tuning.options.metric, tuning.stem.with_suffix(".png"),
                       objective.base_quality.get(tuning.options.metric), report["oracle_modelled_speedup"])
    tables = {"pareto_front": columns(kept)} if kept else {}  # rows name only the parameters their trial searched
    if tuning.options.wandb_per == "study":
        trials = front_rows(tuning.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                            tuning.options.metric, tuning.space)
        if trials:
            tables["trials"] = columns(trials)
    logger.log_run(f"summary:{tuning.study.study_name}", job_type="tune-summary", config=objective.setup,
                   summary={"finished_trials": report["finished_trials"], "baseline": report["baseline"],
                            "notes": report["notes"]}, tables=tables)


def run_tune(options: TuneOptions, pair: ModelPair, examples: list[Example], logger: WandbLogger,
             setup: dict[str, Any], context: dict[str, Any] | None = None, costs: CostModel | None = None
             ) -> dict[str, Any]:
    """Join (or create) the study, run trials until it holds `options.trials`, report its front. `costs`: the
    `--cost-model` file, already read (else it is read here; without one, the setup's cached or calibrated one)."""
    tuning, objective = open_tuning(options, pair, examples, logger, setup, context, costs)
    run_trials(tuning.study, objective, options, tuning.space.size())
    report, here = front_report(tuning, objective, pair)
    publish_front(tuning, objective, report, here, logger)
    return report


FRONT_COLUMNS = {"trial", "speedup", "measured_speedup", "quality_drop", "dominated", "lossy", "chrf", "bleu",
                 "rouge_l", "agreement"}


def check_front(found: Any, label: str) -> dict[str, Any]:
    """A front as `bild bench --from-front` needs it, or one line naming what is wrong; adds `params`, the
    policy's parameter names."""
    from policies import policy_class

    if not isinstance(found, dict) or not isinstance(found.get("front"), list) or not isinstance(
            found.get("policy"), str):
        raise BildError(f"{label} is not a front of `bild tune` (it needs 'policy' and a 'front' list)")
    params = set(policy_class(found["policy"]).model_fields)
    for i, row in enumerate(found["front"]):
        if not isinstance(row, dict) or "trial" not in row:
            raise BildError(f"{label}: front row {i} is not an object with a 'trial'")
        foreign = sorted(set(row) - params - FRONT_COLUMNS)
        if foreign:
            raise BildError(f"{label}: trial {row['trial']} sets {', '.join(foreign)}, which policy "
                            f"{found['policy']!r} does not take: the front's policy and its rows disagree")
    if not found["front"]:
        raise BildError(f"{label} holds no trial yet: let the study finish some")
    return {**found, "params": sorted(params)}


def read_front(path: str | None = None, study_name: str | None = None,
               storage: str | None = None) -> dict[str, Any]:
    """A tune's front, from its FRONT.json or from the study itself: policy, setup, rows and `params`."""
    if path is not None:
        try:
            found = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BildError(f"front file {path!r} does not exist: `bild tune` writes OUT_DIR/STUDY-front.json"
                            ) from None
        except IsADirectoryError:
            raise BildError(f"front file {path!r} is a folder: give the STUDY-front.json of `bild tune`") from None
        except (OSError, ValueError) as e:
            raise BildError(f"{path!r} is not a front file of `bild tune` ({type(e).__name__})") from None
        return check_front(found, f"front file {path!r}")
    if study_name is None or storage is None:
        raise BildError("give --from-front FRONT.json, or both --study NAME and --storage URL")
    storage_ = open_storage(TuneOptions(policy="?", storage=storage))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_)
    except KeyError:
        raise unknown_name("study", study_name, optuna.get_all_study_names(storage_),
                           "studies in that storage") from None
    setup = study.user_attrs.get("setup", {})
    options = TuneOptions(policy=setup.get("policy", "?"), objectives=setup.get("objectives", ["speedup", "quality"]),
                          metric=setup.get("metric", "chrf"), max_quality_drop=setup.get("max_quality_drop"))
    kept, _ = final_front(study, options)
    measured = study.user_attrs.get("confirmation", {}).get("measured_speedup", {})
    for r in kept:
        r["measured_speedup"] = measured.get(str(r["trial"]))
    return check_front({"study": study_name, "policy": options.policy, "setup": setup, "metric": options.metric,
                        "front": kept}, f"study {study_name!r}")
