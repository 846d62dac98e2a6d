"""MLflow runs for train and evaluate: one pipeline run, one MLflow run (in the store that
:mod:`pipeline.tracking.store` resolves). mlflow is imported lazily: it takes seconds.

What the MLflow 3 UI needs to show a run as a model-training run: the experiment's kind tag (what the
UI's own kind selector writes), the ``workflowType`` in the printed link (the 3.17 UI ships with a
GenAI / model-training switch in place of that selector and takes the view from the link, else from
the switch, which starts on GenAI in every new browser), the split as the run's dataset input (the
Dataset column), and artifacts at the root of the run (the compare view lists the root only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config.errors import PipelineError
from pipeline.tracking.naming import (
    MAX_DATASET_DIGEST_SIZE,
    MAX_INPUT_TAG_VALUE_SIZE,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
    as_text,
    default_tags,
    run_name_for,
    sanitize_key,
)
from pipeline.tracking.store import ARTIFACTS_DIR, check_reachable, resolve_tracking_uri, sqlite_path, ui_link

# The MLflow UI's names (its JavaScript bundle; tests/tracking/test_ui.py holds them to the installed one).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # shown as "Machine learning": the runs view, not traces
DATASET_CONTEXT_TAG = "mlflow.data.context"


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _warn(message: str) -> None:
    print(f"tracking: warning: {message}", file=sys.stderr)


_R = TypeVar("_R", bound="_RunContext")


class _RunContext:
    """``with start_run(...) as run:`` ends the run FINISHED, FAILED on an error, KILLED on Ctrl-C."""

    def end(self, status: str = "FINISHED") -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


class NullRun(_RunContext):
    """Tracking disabled: the same interface as :class:`TrackingRun`, doing nothing."""

    run_id: str | None = None
    experiment_id: str | None = None
    uri: str | None = None

    def log_params(self, flat: Mapping[str, Any]) -> dict[str, str]:
        return {}

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None, *, name: str | None = None
    ) -> None:
        pass

    def log_dataset(
        self,
        name: str,
        *,
        digest: str,
        source: str,
        profile: Mapping[str, Any],
        tags: Mapping[str, Any],
        context: str = "train",
    ) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_model(self, weights: str | os.PathLike[str], *, register_as: str | None = None) -> None:
        pass

    def monitor_system(self, interval_s: float, *, resumed: bool = False) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class TrackingRun(_RunContext):
    """An open MLflow run (new or resumed), logged through an explicit ``MlflowClient``."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str):
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri
        self._system: Any = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise PipelineError(
                f"tracking: could not {what} (run {self.run_id} at {self.uri}): {exc.message}"
            ) from None

    def log_params(self, flat: Mapping[str, Any]) -> dict[str, str]:
        """Log every param (sanitised keys, truncated values) in batches of 100. A key already in the
        run (a resumed run, or evaluate after train) with another value cannot change in MLflow: it
        is kept, the new value goes to tag ``changed_param.<key>``; those keys are returned."""
        from mlflow.entities import Param

        existing = self._call("read the run", self.client.get_run, self.run_id).data.params
        new, changed = {}, {}
        for key, value in flat.items():
            key, text = sanitize_key(key), as_text(value)
            if key not in existing:
                new[key] = text
            elif existing[key] != text:
                changed[key] = text
        for batch in _chunks([Param(k, v) for k, v in new.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self._call("log params", self.client.log_batch, self.run_id, params=batch)
        if changed:
            self.set_tags({f"changed_param.{k}": v for k, v in changed.items()})
            _warn(
                f"run {self.run_id} already has other values for {', '.join(sorted(changed))}; "
                "MLflow params cannot change, so the new values are in tags changed_param.*"
            )
        return changed

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """All of one step's metrics in one request (per-scalar calls are slow over HTTP)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        rows = [Metric(sanitize_key(k), float(v), stamp, step or 0) for k, v in metrics.items()]
        for batch in _chunks(rows, MAX_METRICS_PER_BATCH):
            self._call("log metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None, *, name: str | None = None
    ) -> None:
        """Copy a file (or a folder's contents) into the run's artifacts under ``artifact_path`` (the
        root when None: the only level the compare view lists), a file as ``name`` when given."""
        path = Path(path)
        if not path.exists():
            raise PipelineError(f"tracking: artifact {path} does not exist")
        if name and path.is_file() and name != path.name:  # MLflow keeps a file's own name: copy it
            with tempfile.TemporaryDirectory() as tmp:
                return self.log_artifact(shutil.copyfile(path, Path(tmp) / name), artifact_path)
        log = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self._call(f"log artifact {path}", log, self.run_id, str(path), artifact_path)

    def log_dataset(
        self,
        name: str,
        *,
        digest: str,
        source: str,
        profile: Mapping[str, Any],
        tags: Mapping[str, Any],
        context: str = "train",
    ) -> None:
        """The run's input dataset (the runs table's Dataset column): ``name``, ``digest`` (MLflow keeps
        36 characters: a longer hex digest is cut to its prefix), a local ``source`` path. MLflow keeps
        one dataset per experiment, name and digest, whose first ``profile`` and ``source`` every later
        run shares: the profile must follow from the digest alone. What is this run's own goes in
        ``tags`` (input tags are per run), beside ``mlflow.data.context``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest[:MAX_DATASET_DIGEST_SIZE],
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(profile, default=str),
        )
        rows = [InputTag(DATASET_CONTEXT_TAG, context)]
        rows += [InputTag(sanitize_key(k), as_text(v, MAX_INPUT_TAG_VALUE_SIZE)) for k, v in tags.items()]
        self._call("log the dataset", self.client.log_inputs, self.run_id, datasets=[DatasetInput(dataset, rows)])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        rows = [RunTag(sanitize_key(k), as_text(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for batch in _chunks(rows, MAX_PARAMS_TAGS_PER_BATCH):
            self._call("set tags", self.client.log_batch, self.run_id, tags=batch)

    def log_model(self, weights: str | os.PathLike[str], *, register_as: str | None = None) -> None:
        """The trained model file as this run's MLflow Model ``model`` (pyfunc), registered as a new
        version of ``register_as`` when given (see :mod:`pipeline.tracking.model`)."""
        from pipeline.tracking.model import log_pyfunc

        self._call("log the model", log_pyfunc, self.uri, self.run_id, Path(weights), register_as=register_as)

    def monitor_system(self, interval_s: float, *, resumed: bool = False) -> None:
        """Log ``system/*`` metrics every ``interval_s`` seconds until the run ends (0: not at all): CPU
        and memory, disk and network, and GPU utilisation and memory where the NVIDIA library finds a
        GPU. MLflow's own monitor, so the UI's system-metrics charts show them; a resumed run goes on
        from its last step."""
        if interval_s <= 0 or self._system is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=self.uri
        )
        self._system.start()

    def end(self, status: str = "FINISHED") -> None:
        if self._system is not None:  # its last samples are flushed while the run is still open
            self._system.finish()
            self._system = None
        self._call("end the run", self.client.set_terminated, self.run_id, status)


Run = TrackingRun | NullRun


def _quiet_mlflow() -> None:
    """No INFO chatter (database migrations, 'creating tables') and no "Downloading artifacts" bars
    (logging the model loads it back to check the input example) on the stage's console. Environment
    defaults, so a user's own setting wins."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each transfer
    if "mlflow" in sys.modules and os.environ["MLFLOW_LOGGING_LEVEL"].upper() == "WARNING":
        for name in ("mlflow", "alembic"):  # imported earlier by someone else
            logging.getLogger(name).setLevel(logging.WARNING)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The experiment ``name``, created as a model-training experiment when missing; one without a
    kind gets that kind (a kind someone chose, GenAI say, stays)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise PipelineError(
                f"tracking: experiment {name!r} is deleted in {uri}; restore it "
                f"(mlflow experiments restore) or choose another tracking.experiment"
            )
        if not experiment.tags.get(EXPERIMENT_KIND_TAG):
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    database = sqlite_path(uri)  # else MLflow puts artifacts in ./mlruns of the cwd
    location = (database.parent / ARTIFACTS_DIR).as_uri() if database is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:  # created meanwhile by a parallel (queued) run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def read_run_info(path: Path) -> dict[str, Any]:
    """train's ``run.json``: ``{"run_id": str | null, "tracking_uri": str | null}``."""
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); re-run the train stage") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), (str, type(None))):
        raise PipelineError(f'{path}: expected {{"run_id": string or null, ...}}; re-run the train stage')
    return info


def start_run(
    cfg: Mapping[str, Any],
    *,
    repo_root: str | os.PathLike[str],
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Run:
    """Open the run train and evaluate log into. ``cfg`` is the ``tracking`` section; ``run_id``
    resumes that run (evaluate after train, train after an interruption); ``run_name`` is a hint for
    the generated name (see :func:`run_name_for`); ``tags`` go over :func:`default_tags`."""
    if not cfg.get("enabled", True):
        return NullRun()
    uri = resolve_tracking_uri(cfg["uri"], repo_root)
    check_reachable(uri)
    _quiet_mlflow()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        if run_id:
            try:
                info = client.get_run(run_id).info
            except MlflowException:
                _warn(f"run {run_id} is not in {uri}; starting a new run")
            else:
                if info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                run = TrackingRun(client, run_id, info.experiment_id, uri)
                run.set_tags(tags or {})
                return run
        experiment_id = _experiment_id(client, cfg["experiment"], uri)
        all_tags = {**default_tags(repo_root), **(tags or {})}
        created = client.create_run(
            experiment_id,
            run_name=run_name_for(cfg, run_name),
            tags={sanitize_key(k): as_text(v, MAX_TAG_VAL_LENGTH) for k, v in all_tags.items()},
        )
    except MlflowException as exc:
        raise PipelineError(f"tracking: cannot open a run at {uri}: {exc.message}") from None
    print(f"tracking: run {created.info.run_name} ({created.info.run_id}); MLflow UI: {ui_link(uri, experiment_id)}")
    return TrackingRun(client, created.info.run_id, experiment_id, uri)
