"""Studies shared by many workers on a real PostgreSQL (127.0.0.1:5432, trust auth, database `test`).

Each test gets a database of its own. Workers are real `bild tune` processes, as on N machines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import optuna
import pytest
from optuna.trial import TrialState

from conftest import cheap_costs

PG = os.environ.get("BILD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG.replace("postgresql+psycopg", "postgresql") + "/test", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def storage():
    try:
        import psycopg  # noqa: F401

        name = f"bild_{uuid.uuid4().hex[:10]}"
        _admin(f"CREATE DATABASE {name}")
    except Exception as e:
        if os.environ.get("BILD_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is not reachable at {PG}: {e}")
        pytest.skip(f"PostgreSQL is not reachable at {PG}: {e}")
    yield f"{PG}/{name}"
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def worker_args(pair_dirs, tmp_path_factory):
    small, large = pair_dirs("llama", 1)
    prompts = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "reference": "print(i)"}) + "\n"
                               for p in ["def add(", "for i in", "the quick", "import os\n"]))
    return ["tune", "--small", str(small), "--large", str(large), "--prompts", str(prompts), "--policy", "bild",
            "--max-new-tokens", "24", "--wandb-mode", "disabled", "--study", "shared", "--cost-model",
            cheap_costs(prompts.parent), "--space", "fallback_threshold=0:0.05"]


def start_worker(args: list[str], *extra: str, out_dir) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "bild", *args, "--out-dir", str(out_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_two_workers_share_one_study(worker_args, storage, tmp_path):
    # the same seed on both: they must still never evaluate one parameter set twice
    workers = [start_worker(worker_args, "--storage", storage, "--trials", "8", "--sampler-seed", "0",
                            "--sampler", "random", "--confirm", "2", out_dir=tmp_path) for _ in range(2)]
    outputs = [finish(w) for w in workers]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 8  # the total, not 8 per worker
    assert len({t.number for t in finished}) == 8
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert all(t.user_attrs.get("surplus") or "duplicate_of" in t.user_attrs
               for t in study.trials if t.state == TrialState.FAIL)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 8
    assert {"baseline", "cost_model"} <= set(study.user_attrs)  # one of each, shared by the workers
    # one confirmation of the front, made by one worker on its clock, read by the other; one front file
    confirmed = study.user_attrs["confirmation"]
    front = json.loads((tmp_path / "shared-front.json").read_text())
    assert front["confirmed_by"] == confirmed["by"]
    assert {str(r["trial"]): r["measured_speedup"] for r in front["front"] if r["measured_speedup"] is not None} \
        == confirmed["measured_speedup"]
    assert outputs[0] == outputs[1]  # both print the same front, measured speedups included


def wait_for_a_fresh_trial(url: str, timeout: float = 180) -> None:
    """Until a trial after the first has its parameters and just started (far from its end when killed)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    # one storage, no pool: polling must not hold connections (PostgreSQL allows only so many)
    deadline, storage = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            storage = storage or optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
            study = optuna.load_study(study_name="shared", storage=storage)
        except (KeyError, SQLAlchemyError):  # the study (or the schema the workers create) does not exist yet
            time.sleep(0.2)
            continue
        now = datetime.now()
        if study.get_trials(states=FINISHED) and any(
                t.user_attrs.get("params_key") and (now - t.datetime_start).total_seconds() < 1.0
                for t in study.get_trials(states=(TrialState.RUNNING,))):
            return
        time.sleep(0.05)
    raise AssertionError("no trial started in time")


def kill_a_worker_mid_trial(worker_args: list[str], storage: str, trials: str, heartbeat: str, out_dir) -> None:
    # many repeats make each trial long enough to be killed in the middle of one
    victim = start_worker(worker_args, "--storage", storage, "--trials", trials, "--repeats", "40", "--heartbeat",
                          heartbeat, out_dir=out_dir)
    wait_for_a_fresh_trial(storage)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()


def test_a_killed_workers_trial_is_retried_and_the_study_resumes(worker_args, storage, tmp_path):
    kill_a_worker_mid_trial(worker_args, storage, "5", "1", tmp_path)
    study = optuna.load_study(study_name="shared", storage=storage)
    killed = study.get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 1
    done_before = len(study.get_trials(states=FINISHED))
    time.sleep(3)  # past the grace period: the heartbeat of the killed trial is stale

    # the restarted command resumes (a 1 s heartbeat, so the test need not wait a minute)
    finish(start_worker(worker_args, "--storage", storage, "--trials", "5", "--heartbeat", "1", out_dir=tmp_path))
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 5 > done_before
    failed = study.trials[killed[0].number]
    assert failed.state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    assert retried[0].state in FINISHED


def test_a_worker_restarted_at_once_waits_for_its_dead_trial_and_finishes(worker_args, storage, tmp_path):
    kill_a_worker_mid_trial(worker_args, storage, "4", "2", tmp_path)
    # restarted at once: the dead trial still looks alive until its heartbeat is 4 s old
    restarted = start_worker(worker_args, "--storage", storage, "--trials", "4", "--heartbeat", "2", out_dir=tmp_path)
    _, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err
    assert "Traceback" not in err
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
