"""``python -m pipeline search``: trials of ``search.space``, each a DVC experiment, until the study has
its trial count.

Each trial is ``dvc exp run --temp -n <study>-<number> -S key=value ... evaluate``: a DVC experiment in a
temporary copy (the workspace stays usable; stages a trial does not change come from DVC's cache),
visible in ``dvc exp show`` and appliable with ``dvc exp apply``. Its train stage reports every epoch's
monitored score to the study and stops when the pruner says so (:mod:`pipeline.search.trial`); its
MLflow run is nested under the study's run. ``jobs`` threads each ask Optuna for a trial, run it and
tell the result, then ask again: a new trial starts as soon as any ends. Ctrl-C kills every trial's
process group and exits 130; a killed search's running trials are marked failed by the next one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.errors import PipelineError
from pipeline.config.params import Params
from pipeline.search import study as studies
from pipeline.search.space import suggest
from pipeline.search.trial import ENV

TRAIN_SUMMARY = "outputs/train/summary.json"
# A trial runs the pipeline up to evaluate (its test scores belong in `dvc exp show`); exporting every
# trial's model would cost more than its evaluation: export runs for the one applied (`dvc repro`).
TRIAL_TARGET = "evaluate"
METRICS = ("outputs/train/metrics.json", "outputs/evaluate/metrics.json")
INTERRUPTED = 130
FAILED_IN_A_ROW = 3  # trials failing one after another: the cause is not the trial's values; stop asking


@dataclass
class Plan:
    """Everything a search needs, resolved from params.yaml and the command line."""

    root: Path
    search: dict[str, Any]
    name: str
    spec: str
    objective: str
    direction: str
    epochs: int
    tracking: dict[str, Any]
    timeout: float | None = None
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.root / studies.LOCAL_DIR / self.name


def plan_from(
    params: Params, *, trials: int | None = None, jobs: int | None = None, timeout: float | None = None
) -> Plan:
    """The search of ``params`` with the command line's overrides (each checked as the section is)."""
    from pipeline.config.schema import check_value
    from pipeline.training.early_stopping import resolve_monitor

    search = params.get("search")
    if trials is not None:
        search["trials"] = check_value("sections/search.schema.json#/properties/trials", trials, "--trials")
    if jobs is not None:
        search["jobs"] = check_value("sections/search.schema.json#/properties/jobs", jobs, "--jobs")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise PipelineError(f"--timeout {timeout}: expected a number of seconds above 0")
    if not search["space"]:
        raise PipelineError(f"{params.path}: search.space is empty; name the params keys to search over")
    stopping = params.get("train.early_stopping")
    monitor, mode = resolve_monitor(params.get("data.task"), stopping["monitor"], stopping["mode"])
    objective = f"best_{monitor}" if search["objective"] == "auto" else search["objective"]
    direction = search["direction"]
    if direction == "auto":
        if search["objective"] == "auto":
            direction = "maximize" if mode == "max" else "minimize"
        else:
            direction = "minimize" if objective.endswith("loss") else "maximize"
    if search["pruner"]["name"] != "none" and direction != ("maximize" if mode == "max" else "minimize"):
        raise PipelineError(
            f"{params.path}: search.pruner: the pruner compares {monitor} (the train monitor, "
            f"{'higher' if mode == 'max' else 'lower'} is better) across trials, but the study "
            f"is to {direction} {objective}; use pruner none, or an objective of the same sense"
        )
    name = studies.study_name(search, params.get("tracking.experiment"))
    return Plan(
        params.root,
        search,
        name,
        studies.storage_spec(search, params.root, name),
        objective,
        direction,
        int(params.get("train.epochs")),
        params.get("tracking"),
        timeout,
    )


def _scalar(value: Any) -> str:
    """``value`` as DVC's ``-S key=value`` parses it back (YAML): 1e-05 as 1.0e-05, strings quoted when
    they would read as something else."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


class Search:
    """One worker of a study: ``jobs`` threads running trials until the study is complete."""

    def __init__(self, plan: Plan, study: Any):
        self.plan, self.study = plan, study
        self.stop = threading.Event()  # Ctrl-C
        self.exhausted = threading.Event()  # the sampler has nothing left (the grid is used up)
        self.failed_in_a_row = 0
        self.lock = threading.Lock()
        self.running: dict[int, subprocess.Popen] = {}  # trial number -> its guard process
        self.started = time.monotonic()
        self.parent_run_id: str | None = None

    # -- the study's bookkeeping --------------------------------------------------------------------
    def remaining(self) -> int:
        """Trials still to start: the target less the finished (complete, pruned) and running ones."""
        from optuna.trial import TrialState

        done = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        return self.plan.search["trials"] - len(done)

    def _next(self) -> Any:
        with self.lock:  # one ask at a time here; other machines are serialised by the storage
            if (
                self.stop.is_set()
                or self.exhausted.is_set()
                or self.remaining() <= 0
                or self.failed_in_a_row >= FAILED_IN_A_ROW
            ):
                return None
            if self.plan.timeout is not None and time.monotonic() - self.started > self.plan.timeout:
                return None
            trial = self.study.ask()
            trial.set_user_attr(studies.WORKER, studies.this_worker())
            return trial

    # -- one trial ----------------------------------------------------------------------------------
    def worker(self, slot: int) -> None:
        while True:
            trial = self._next()
            if trial is None:
                return
            self.run_trial(trial, slot)

    def run_trial(self, trial: Any, slot: int) -> None:
        from optuna.trial import TrialState

        values = suggest(trial, self.plan.search["space"])
        name = f"{self.plan.name}-{trial.number}"
        trial.set_user_attr("dvc_exp", name)
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.plan.log_dir / f"trial-{trial.number}.log"
        print(
            f"search: trial {trial.number} ({name}): " + ", ".join(f"{k}={v!r}" for k, v in values.items()), flush=True
        )
        command = [
            sys.executable,
            "-m",
            "pipeline.search.guard",
            *self._cpus(slot),
            "--",
            "dvc",
            "exp",
            "run",
            "--temp",
            "-n",
            name,
            *(f"-S{k}={_scalar(v)}" for k, v in values.items()),
            TRIAL_TARGET,
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                cwd=self.plan.root,
                env=self._env(trial, slot),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with self.lock:
                self.running[trial.number] = process
            status = process.wait()
            with self.lock:
                self.running.pop(trial.number, None)
        if self.stop.is_set():
            return  # interrupted: the main thread records it
        if status != 0:
            self._fail(trial, f"dvc exp run exited {status}: {_tail(log)} (log: {log})")
            return
        try:
            outcome = read_outcome(self.plan.root, name, self.plan.objective)
        except PipelineError as exc:
            self._fail(trial, str(exc))
            return
        with self.lock:
            self.failed_in_a_row = 0
        trial.set_user_attr("epochs_run", outcome["epochs_run"])  # before tell: a finished trial is frozen
        if outcome["pruned"]:
            self._tell(trial, state=TrialState.PRUNED)
            print(f"search: trial {trial.number} pruned after epoch {outcome['epochs_run']}", flush=True)
        else:
            self._tell(trial, outcome["value"])
            print(f"search: trial {trial.number} {self.plan.objective} = {outcome['value']:.4f}", flush=True)

    def _tell(self, trial: Any, value: float | None = None, **kwargs: Any) -> None:
        if not studies.tell(self.study, trial, value, **kwargs):
            self.exhausted.set()  # the grid is used up: start no more trials

    def _fail(self, trial: Any, error: str) -> None:
        with self.lock:
            self.failed_in_a_row += 1
        if not studies.mark_failed(self.study, trial, error):
            self.exhausted.set()
        print(f"search: trial {trial.number} failed: {error.splitlines()[-1] if error else ''}", flush=True)

    def _cpus(self, slot: int) -> list[str]:
        """``--cpus a,b``: this slot's equal share of the cores this process may use (all of them when
        there are fewer cores than jobs)."""
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        jobs = self.plan.search["jobs"]
        if len(cores) < jobs or jobs == 1:
            return []
        share = len(cores) // jobs
        return ["--cpus", ",".join(map(str, cores[slot * share : (slot + 1) * share]))]

    def _env(self, trial: Any, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV] = json.dumps(
            {
                "storage": self.plan.spec,
                "study": self.plan.name,
                "trial_id": trial._trial_id,
                "number": trial.number,
                "pruner": self.plan.search["pruner"],
                "epochs": self.plan.epochs,
                "parent_run_id": self.parent_run_id,
            }
        )
        if self.plan.search["jobs"] > 1 and (gpus := _gpus()):  # one trial at a time keeps every GPU
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        return env

    # -- the whole run ------------------------------------------------------------------------------
    def run(self) -> int:
        threads = [
            threading.Thread(target=self.worker, args=(slot,), name=f"trial-slot-{slot}", daemon=True)
            for slot in range(self.plan.search["jobs"])
        ]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
        except KeyboardInterrupt:
            self.interrupt()
            return INTERRUPTED
        if self.failed_in_a_row >= FAILED_IN_A_ROW:
            print(
                f"search: stopped after {self.failed_in_a_row} failed trials in a row; the cause is likely not "
                f"the values tried: see the last trial's log in {self.plan.log_dir}",
                file=sys.stderr,
            )
            return 1
        return 0

    def interrupt(self) -> None:
        """Ctrl-C: kill every running trial's process group and record those trials as failed."""
        from optuna.trial import TrialState

        self.stop.set()
        with self.lock:
            running = dict(self.running)
        for process in running.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in running.values():
            process.wait()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in running:
                studies.mark_failed(self.study, trial, "interrupted (Ctrl-C)")
        print(f"search: interrupted; {len(running)} running trial(s) stopped and marked failed", file=sys.stderr)


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def experiment_ref(root: Path, name: str) -> str | None:
    """The git ref of DVC experiment ``name`` (refs/exps/<baseline>/<name>), the newest if several."""
    refs = _git(root, "for-each-ref", "--sort=-creatordate", "--format=%(refname)", "refs/exps/").split()
    return next((ref for ref in refs if ref.rsplit("/", 1)[-1] == name), None)


def read_outcome(root: Path, name: str, objective: str) -> dict[str, Any]:
    """What trial ``name`` achieved, read from its experiment's commit: pruned or not, epochs run, and
    the objective (a key of the train or evaluate metrics)."""
    ref = experiment_ref(root, name)
    if ref is None:
        raise PipelineError(f"no DVC experiment named {name} was recorded")
    summary = json.loads(_git(root, "show", f"{ref}:{TRAIN_SUMMARY}") or "{}")
    metrics: dict[str, Any] = {}
    for path in METRICS:
        metrics.update(json.loads(_git(root, "show", f"{ref}:{path}") or "{}"))
    value = metrics.get(objective)
    pruned = bool(summary.get("pruned"))
    if not pruned and not (isinstance(value, (int, float)) and math.isfinite(value)):
        known = ", ".join(sorted(metrics)) or "none"
        raise PipelineError(f"experiment {name} has no finite {objective!r} (metrics: {known})")
    return {"pruned": pruned, "value": value, "epochs_run": summary.get("epochs_run")}


def run_search(
    params_path: str | Path,
    *,
    trials: int | None = None,
    jobs: int | None = None,
    timeout: float | None = None,
    report_only: bool = False,
) -> int:
    """Validate, open the study, run this worker's trials (unless ``report_only``), report. Returns the
    exit status: 0; 1 when trials kept failing one after another; 130 after Ctrl-C."""
    from pipeline.config.params import load_params
    from pipeline.search import report

    params = load_params(params_path)
    plan = plan_from(params, trials=trials, jobs=jobs, timeout=timeout)
    if not (plan.root / ".dvc").is_dir() or not _git(plan.root, "rev-parse", "HEAD"):
        raise PipelineError(
            f"{plan.root}: a search runs its trials as DVC experiments; it needs a git repository "
            "with a commit and `dvc init`"
        )
    study, created = studies.open_study(
        plan.name, plan.spec, direction=plan.direction, search=plan.search, epochs=plan.epochs
    )
    status = 0
    if not report_only:
        orphans = studies.fail_orphans(study)
        if orphans:
            print(f"search: trial(s) {', '.join(map(str, orphans))} of a killed search marked failed", flush=True)
        search = Search(plan, study)
        search.parent_run_id = report.parent_run(plan.tracking, plan.root, study, created=created)
        print(
            f"search: study {plan.name} ({plan.direction} {plan.objective}) in {studies.redacted(plan.spec)}; "
            f"{max(0, search.remaining())} trial(s) to run, {plan.search['jobs']} at a time",
            flush=True,
        )
        status = search.run()
        if status != INTERRUPTED:
            plots = report.draw(study, plan.log_dir)
            report.finish_parent_run(plan.tracking, plan.root, study, search.parent_run_id, plots)
    report.print_summary(report.summary(study, objective=plan.objective, epochs=plan.epochs))
    if report_only:
        plots = report.draw(study, plan.log_dir)
        if plots:
            print(f"plots: {', '.join(str(p.relative_to(plan.root)) for p in plots)}")
    return status
