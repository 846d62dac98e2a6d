"""The training side of a search trial, in-process: the train stage reports each epoch's monitored
score to the study, stops where the pruner says (recorded as pruned in summary.json, the study and the
MLflow run), and its MLflow run is nested under the study's run."""

from __future__ import annotations

import json

import optuna
import pytest

from pipeline.search.study import open_storage
from pipeline.search.trial import ENV
from stages import train as train_stage
from tests.conftest import make_workspace


def _study(path):
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    return study


@pytest.mark.slow
def test_a_losing_trial_is_pruned_after_its_warmup_and_recorded(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_workspace(
        tmp_path / "ws",
        **{"train.epochs": 3, "tracking.enabled": True, "tracking.uri": uri, "tracking.system_metrics": 0},
    )
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("yamltrain", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(experiment, run_name="s").info.run_id
    study = _study(tmp_path / "s.journal")  # a perfect earlier trial: any real score is below its median
    trial = study.ask()
    monkeypatch.setenv(
        ENV,
        json.dumps(
            {
                "storage": str(tmp_path / "s.journal"),
                "study": "s",
                "trial_id": trial._trial_id,
                "number": trial.number,
                "epochs": 3,
                "pruner": {"name": "median", "warmup_epochs": 1, "startup_trials": 1},
                "parent_run_id": parent,
            }
        ),
    )
    assert train_stage.main(["--params", str(params)]) == 0
    summary = json.loads((params.parent / "outputs/train/summary.json").read_text())
    assert summary["pruned"] is True and summary["stopped_early"] is True
    assert summary["epochs_run"] == 2  # the warmup epoch, then the first that may be pruned
    reported = optuna.load_study(study_name="s", storage=open_storage(str(tmp_path / "s.journal"))).trials[1]
    assert sorted(reported.intermediate_values) == [1, 2]
    assert reported.intermediate_values[2] == pytest.approx(summary["last_epoch"][summary["monitor"]])
    run_id = json.loads((params.parent / "outputs/train/run.json").read_text())["run_id"]
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["search.state"] == "pruned"
    assert (tags["search.study"], tags["search.trial"]) == ("s", "1")


def test_without_a_trial_nothing_is_reported(monkeypatch):
    from pipeline.search.trial import TrialReporter
    from pipeline.tracking.naming import trial_tags

    monkeypatch.delenv(ENV, raising=False)
    assert TrialReporter.from_env() is None and trial_tags() == {}
