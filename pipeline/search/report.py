"""What a search found: the top trials, the trial counts, the epochs pruning saved, the command that
applies the best trial; the study's plots (PNG); and the study's MLflow run, the parent of every
trial's run, which carries the best value and params and the plots."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.search import study as studies

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def summary(study: Any, *, objective: str, epochs: int, top: int = 5) -> str:
    """The report printed at the end of a search and by ``search --report``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = studies.counts(study)
    lines = [
        f"study {study.study_name}: {len(trials)} trial(s): "
        + ", ".join(f"{count.get(state, 0)} {state}" for state in ("complete", "pruned", "fail", "running"))
    ]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    spent = sum(int(t.user_attrs.get("epochs_run") or 0) for t in finished)
    unpruned = sum(
        epochs if t.state == TrialState.PRUNED else int(t.user_attrs.get("epochs_run") or 0) for t in finished
    )
    if finished:
        lines.append(f"epochs spent: {spent} (the same trials unpruned: {unpruned})")
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best_first = sorted(complete, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    if best_first:
        lines.append(f"top trials by {objective} ({study.direction.name.lower()}):")
        for t in best_first[:top]:
            params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
            lines.append(f"  #{t.number:<4} {t.value:.4f}  {t.user_attrs.get('dvc_exp', '')}  {params}")
        lines.append(f"apply the best: dvc exp apply {best_first[0].user_attrs.get('dvc_exp')}")
    failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error")]
    for t in failed[-3:]:
        lines.append(f"  trial {t.number} failed: {str(t.user_attrs['error']).splitlines()[-1][:200]}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def draw(study: Any, folder: Path) -> list[Path]:
    """The optimisation history, parameter importances and parallel coordinates as PNGs in ``folder``
    (those the study has enough trials for)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views
    from optuna.exceptions import ExperimentalWarning

    from pipeline.atomic import atomic_path

    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # importances of equal values: said by the plot
                axes = getattr(views, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials or one value only
            continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        figure.set_size_inches(9, 5)
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


PARENT_RUN = "mlflow_parent_run_id"  # study user attribute
PARENT_RUN_WAIT_S = 30.0  # how long a joining worker waits for the creator to open the run


def parent_run(tracking: dict[str, Any], root: Path, study: Any, *, created: bool = True) -> str | None:
    """The study's MLflow run (its id kept in the study), or None when tracking is off. The worker that
    ``created`` the study opens it; a worker that joined a study still without trials waits for that id
    (workers started together would otherwise each open one), then opens it itself if none came."""
    if not tracking.get("enabled", True):
        return None
    known = study.user_attrs.get(PARENT_RUN)
    deadline = time.monotonic() + PARENT_RUN_WAIT_S
    while not known and not created and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.5)  # the creator opens the run before it asks for its first trial
        known = study.user_attrs.get(PARENT_RUN)
    if known:
        return str(known)
    from pipeline.tracking.run import start_run

    run = start_run(
        tracking,
        repo_root=root,
        run_name=study.study_name,
        tags={"search.study": study.study_name, "search.role": "study"},
    )
    study.set_user_attr(PARENT_RUN, run.run_id)
    return run.run_id


def finish_parent_run(tracking: dict[str, Any], root: Path, study: Any, run_id: str | None, plots: list[Path]) -> None:
    """Record the best value and params, the counts and the plots on the study's run."""
    if run_id is None:
        return
    from mlflow import MlflowClient

    from pipeline.tracking.store import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking["uri"], root))
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None and best.value is not None and math.isfinite(best.value):
        client.log_metric(run_id, "best_value", float(best.value))
        client.set_tag(run_id, "search.best_trial", str(best.number))
        for key, value in best.params.items():
            client.set_tag(run_id, f"best.{key}", str(value))
    for state, n in studies.counts(study).items():
        client.set_tag(run_id, f"search.{state}", str(n))
    for path in plots:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")


def print_summary(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
