"""The training side of a search trial: report each epoch's monitored score to the study, and learn
whether the trial is pruned.

``python -m pipeline search`` runs each trial as ``dvc exp run`` with ``YAMLTRAIN_TRIAL`` in its
environment (JSON: the storage, study, trial id and number, the pruner, the MLflow parent run). The
train stage finds it here; without it (every ordinary run) nothing here imports Optuna or does anything.
The pruner is rebuilt from the same settings as the search's, since Optuna keeps it in the study
object, not in the storage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

ENV = "YAMLTRAIN_TRIAL"


def trial_info() -> dict[str, Any] | None:
    """The trial this process trains for, or None."""
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else None


def trial_tags() -> dict[str, str]:
    """MLflow tags that nest a trial's run under the study's run and name its study and number."""
    info = trial_info()
    if not info:
        return {}
    tags = {"search.study": str(info["study"]), "search.trial": str(info["number"]), "search.state": "running"}
    if info.get("parent_run_id"):
        tags["mlflow.parentRunId"] = str(info["parent_run_id"])
    return tags


@dataclass
class TrialReporter:
    """Reports to one trial of a study (in the search's storage) and asks its pruner."""

    study: Any
    trial: Any
    number: int

    @classmethod
    def from_env(cls) -> TrialReporter | None:
        info = trial_info()
        if not info:
            return None
        import optuna

        from pipeline.search.study import open_storage, pruner

        study = optuna.load_study(
            study_name=info["study"],
            storage=open_storage(info["storage"]),
            pruner=pruner(info["pruner"], int(info["epochs"])),
        )
        return cls(study, optuna.trial.Trial(study, int(info["trial_id"])), int(info["number"]))

    def report(self, epoch: int, value: float, *, last: bool = False) -> bool:
        """Record ``value`` at ``epoch`` (1-based); True when the pruner stops the trial here. The last
        epoch is never pruned: the trial has spent its budget, and its score counts."""
        self.trial.report(float(value), step=epoch)
        return not last and bool(self.trial.should_prune())
