"""The training side of a search trial: report each epoch's monitored score to the study, and learn
whether the trial is pruned.

``python -m pipeline search`` runs each trial as ``dvc exp run`` with ``YAMLTRAIN_TRIAL`` in its
environment (JSON: the storage, study, trial id and number, the pruner, the MLflow parent run), read by
:func:`pipeline.tracking.naming.trial_info` (which also tags the trial's run, so tracking needs nothing
from search). The train stage finds it here; without it (every ordinary run) nothing here imports Optuna
or does anything. The pruner is rebuilt from the same settings as the search's, since Optuna keeps it in the study
object, not in the storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.tracking.naming import TRIAL_ENV as ENV
from pipeline.tracking.naming import trial_info

__all__ = ["ENV", "TrialReporter", "trial_info"]


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
