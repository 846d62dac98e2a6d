"""The study: Optuna's storage, sampler and pruner from ``search:``, and the bookkeeping that lets a
killed search continue and several machines share one study.

Storage: ``search.storage: null`` is a journal file in the repository (``.search/<study>.journal``,
git-ignored; Optuna's file-locked journal, safe for the trials of one machine); a database URL
(``postgresql+psycopg://...``) is Optuna's RDB storage, which several machines share. Each running
trial records the host and process that runs it, so a worker that starts finds the trials of dead
workers on its own host and marks them failed: the study then continues to its trial count.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from pipeline.config.errors import PipelineError
from pipeline.processes import process_running

LOCAL_DIR = ".search"  # beside params.yaml; git-ignored
WORKER = "worker"  # trial user attribute: {"host": ..., "pid": ...} of the search running it
CREATE_ATTEMPTS = 5  # workers started together on a fresh database race to create its tables


def study_name(search: dict[str, Any], experiment: str) -> str:
    """``search.study``, or the tracking experiment's name followed by ``-search``."""
    return search["study"] or f"{experiment}-search"


def storage_spec(search: dict[str, Any], root: Path, name: str) -> str:
    """What :func:`open_storage` opens, as one string a trial's process can be handed: a database URL,
    or the absolute path of the local journal file."""
    if search["storage"]:
        return search["storage"]
    return str(root / LOCAL_DIR / f"{name}.journal")


def is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec: str) -> Any:
    """Optuna's storage for ``spec``: RDB for a URL, a file journal for a path (its folder made)."""
    import optuna

    if is_url(spec):
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(spec, engine_kwargs={"pool_pre_ping": True})
            except Exception as exc:  # SQLAlchemy's driver and connection errors
                if attempt + 1 < CREATE_ATTEMPTS and _lost_creation_race(exc):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise PipelineError(
                    f"search.storage: cannot open {redacted(spec)} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]})"
                ) from None
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def _lost_creation_race(exc: Exception) -> bool:
    """Whether ``exc`` is another worker creating Optuna's tables in a fresh database at the same moment
    (PostgreSQL: a unique violation in its catalog, or a table that now already exists): opening the
    storage again then finds the tables made."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError) or "already exists" in str(exc)


def redacted(url: str) -> str:
    """A database URL without its password."""
    head, sep, tail = url.partition("://")
    if "@" in tail:
        credentials, _, host = tail.rpartition("@")
        tail = f"{credentials.split(':')[0]}:***@{host}"
    return head + sep + tail


def sampler(cfg: dict[str, Any], space: dict[str, Any]) -> Any:
    import optuna

    from pipeline.search.space import grid

    seed, name = cfg["seed"], cfg["name"]
    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(cfg: dict[str, Any], epochs: int) -> Any:
    import optuna

    # Steps are 1-based epochs; Optuna considers pruning from step n_warmup_steps (min_resource) on, so
    # the first epoch that may be pruned is the one after the warmup.
    name, first = cfg["name"], cfg["warmup_epochs"] + 1
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg["startup_trials"], n_warmup_steps=first)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(first, epochs))
    return optuna.pruners.NopPruner()


def open_study(name: str, spec: str, *, direction: str, search: dict[str, Any], epochs: int) -> tuple[Any, bool]:
    """The study ``name`` in ``spec`` (created when missing, else joined with its own direction), with
    the sampler and pruner of ``search``; and whether this call created it: of workers started together
    on one storage exactly one does (the storage's unique study name decides), and it opens the study's run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, study_pruner = open_storage(spec), pruner(search["pruner"], epochs)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=optuna.study.StudyDirection[direction.upper()],
            pruner=study_pruner,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=storage, pruner=study_pruner), False
    if study.direction.name.lower() != direction:
        raise PipelineError(
            f"search.study {name!r} in {redacted(spec)} was created to {study.direction.name.lower()}, "
            f"not {direction}; name another study"
        )
    study.sampler = sampler(
        {**search["sampler"], "seed": worker_seed(search["sampler"]["seed"], study, spec)}, search["space"]
    )
    return study, created


def worker_seed(seed: int | None, study: Any, spec: str) -> int | None:
    """The sampler's seed for this worker. A fresh study's first worker uses ``seed`` as given (a
    search is reproducible); a worker that joins or continues a study starts its own stream (the
    given seed would replay the values already tried), and on shared storage, where workers start
    together, each machine and process draws its own."""
    if seed is None:
        return None
    joined = len(study.get_trials(deepcopy=False))
    if not joined and not is_url(spec):
        return seed
    salt = f"{seed}:{joined}:{socket.gethostname()}:{os.getpid()}" if is_url(spec) else f"{seed}:{joined}"
    return int.from_bytes(hashlib.sha256(salt.encode()).digest()[:4], "little")


def tell(study: Any, trial: Any, value: float | None = None, **kwargs: Any) -> bool:
    """``study.tell``; False when the sampler has nothing left to try. The grid sampler calls
    ``study.stop()`` once the grid is used up, which Optuna refuses outside ``optimize`` (RuntimeError)
    after the trial is stored: that is the end of the grid, not a failure."""
    try:
        study.tell(trial, value, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise
        return False
    return True


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphans(study: Any) -> list[int]:
    """Mark failed the RUNNING trials whose search process, on this host, is gone (killed); return
    their numbers. Trials of live workers, or of other hosts, are left alone."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER) or {}
        if worker.get("host") == host and not process_running(int(worker.get("pid", 0))):
            mark_failed(study, trial, "its search was killed")
            failed.append(trial.number)
    return failed


def mark_failed(study: Any, trial: Any, error: str) -> bool:
    """Record ``trial`` (running, of any worker) as failed with ``error``, the end of which is kept; False
    when the sampler has nothing left (see :func:`tell`)."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial._trial_id, "error", error[-2000:])
    return tell(study, trial.number, state=TrialState.FAIL)


def counts(study: Any) -> dict[str, int]:
    """Trials by state (complete, pruned, fail, running, waiting)."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name.lower()] = out.get(trial.state.name.lower(), 0) + 1
    return out
