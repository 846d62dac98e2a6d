"""Several machines on one study, for real: two ``python -m pipeline search`` workers started at the same
instant on one study in a real PostgreSQL (Optuna's RDB storage), logging to a real MLflow tracking
server whose backend store is the same PostgreSQL. Together they run the study's trial count, each
trial once, as DVC experiments, nested in MLflow under one study run."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import (
    REPO,
    MlflowServer,
    Postgres,
    ReproducedRepo,
    copy_repo,
    dvc_env,
    running_mlflow_server,
    sh,
    write_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(2)]  # real dvc repro / dvc exp run in a git repository

STUDY = "shared"
EXPERIMENT = "shared-search"
WORKERS = 2
STARTED = re.compile(r"^search: trial (\d+) \((\S+)\): ", re.MULTILINE)


@pytest.fixture(scope="module")
def postgres_mlflow(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow tracking server whose backend store is the PostgreSQL database ``mlflow``."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-postgres"), postgres.url("mlflow")) as server:
        yield server


def test_workers_opening_a_fresh_database_at_once_all_get_the_storage(postgres: Postgres) -> None:
    """Optuna creates its tables on first use; workers started together on a fresh database race to, and
    the losers' CREATEs fail (PostgreSQL: a unique violation in its catalog). Each must still open it."""
    engine = sqlalchemy.create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(sqlalchemy.text("CREATE DATABASE fresh"))
    engine.dispose()
    code = "import sys; from pipeline.search.study import open_storage; open_storage(sys.argv[1])"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, postgres.url("fresh")], cwd=REPO, text=True, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, errors


def test_two_workers_share_one_study_in_postgresql(
    tmp_path: Path, postgres: Postgres, postgres_mlflow: MlflowServer, reproduced_repo: ReproducedRepo
) -> None:
    ws = copy_repo(reproduced_repo.root, tmp_path / "ws")  # reproduced: each trial re-runs only what lr changes
    write_params(
        ws / "params.yaml",
        ws / "params.yaml",
        **{
            "train.epochs": 1,
            "scheduler.warmup.epochs": 0,
            "tracking.uri": postgres_mlflow.uri,
            "tracking.experiment": EXPERIMENT,
            "tracking.system_metrics": 0,
            "search.study": STUDY,
            "search.storage": postgres.url("study"),
            "search.trials": 2,
            "search.jobs": 1,
            "search.pruner": {"name": "none", "warmup_epochs": 1},
            "search.space": {"optimizer.lr": {"type": "categorical", "choices": [0.001, 0.003]}},
        },
    )
    sh(ws, "git", "commit", "-qam", "a study shared by two workers")

    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]  # outside the repository: git stays clean
    env = {**dvc_env(), "OMP_NUM_THREADS": "1"}  # a core each, as on two machines: no oversubscribed torch threads
    workers = []
    try:
        for log in logs:
            with open(log, "wb") as out:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "pipeline", "search"],
                        cwd=ws,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        statuses = [worker.wait(timeout=420) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()  # its trials' guards die with it
                worker.wait()
    outputs = [log.read_text() for log in logs]
    assert statuses == [0] * WORKERS, "\n\n".join(outputs)

    # The study: exactly the trial count, all complete, each number once.
    study = optuna.load_study(study_name=STUDY, storage=postgres.url("study"))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, "\n\n".join(outputs)
    numbers = sorted(t.number for t in trials)
    assert numbers == [0, 1]
    names = {t.number: t.user_attrs["dvc_exp"] for t in trials}
    assert sorted(names.values()) == [f"{STUDY}-0", f"{STUDY}-1"]

    # Each trial was started once, by one worker, and each worker started one (neither waited out the other).
    started = [STARTED.findall(output) for output in outputs]
    assert sorted((int(n), name) for runs in started for n, name in runs) == sorted(names.items()), outputs
    assert [len(runs) for runs in started] == [1] * WORKERS, outputs

    # Each trial is one DVC experiment.
    table = sh(ws, "dvc", "exp", "show", "--csv").stdout
    experiments = Counter(row["Experiment"] for row in csv.DictReader(io.StringIO(table)))
    assert all(experiments[name] == 1 for name in names.values()), table

    # MLflow: the trials' runs nested under the one study run, on the server backed by PostgreSQL.
    client = MlflowClient(tracking_uri=postgres_mlflow.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    study_runs = [r for r in runs if r.data.tags.get("search.role") == "study"]
    trial_runs = [r for r in runs if "search.trial" in r.data.tags]
    assert [r.info.run_id for r in study_runs] == [study.user_attrs["mlflow_parent_run_id"]], [
        (r.info.run_id, r.data.tags) for r in study_runs
    ]
    assert sorted(int(r.data.tags["search.trial"]) for r in trial_runs) == numbers
    assert {r.data.tags.get("mlflow.parentRunId") for r in trial_runs} == {study_runs[0].info.run_id}
    assert study_runs[0].info.status == "FINISHED"
