"""``python -m pipeline search`` as a user runs it, for real: trials are ``dvc exp run --temp``
experiments in a git + DVC repository, two at a time; ``kill -9`` of the search leaves no process
behind, and the same command continues the study to its trial count; Ctrl-C stops every trial and
exits 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from pipeline.search.study import open_storage
from tests.conftest import ReproducedRepo, copy_repo, dvc_env, sh, write_params

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(3)]  # real dvc repro / dvc exp run in a git repository

SPACE = {"optimizer.lr": {"type": "categorical", "choices": [0.001, 0.003, 0.01]}}


@pytest.fixture(scope="module")
def repo(reproduced_repo: ReproducedRepo, tmp_path_factory) -> Path:
    """A reproduced repository with a search space: a trial re-runs only what the learning rate changes."""
    ws = copy_repo(reproduced_repo.root, tmp_path_factory.mktemp("search") / "repo")
    write_params(
        ws / "params.yaml",
        ws / "params.yaml",
        **{
            "train.epochs": 1,
            "scheduler.warmup.epochs": 0,
            "search.trials": 3,
            "search.jobs": 2,
            "search.space": SPACE,
            "search.pruner": {"name": "none", "warmup_epochs": 1},
            "tracking.system_metrics": 0,
        },
    )
    sh(ws, "git", "commit", "-qam", "a search space")
    return ws


def _study(ws: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(ws / ".search" / f"{name}.journal")))


def _states(ws: Path, name: str) -> list[TrialState]:
    try:
        return [t.state for t in _study(ws, name).get_trials(deepcopy=False)]
    except (KeyError, FileNotFoundError, ValueError):
        return []


def _start(ws: Path, *args: str) -> subprocess.Popen:
    path = ws.parent / f"search{len(args)}.log"  # outside the repository: git stays clean
    with open(path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "search", *args],
            cwd=ws,
            env=dvc_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    process.log = path
    return process


def _wait(condition, seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the search exited {process.returncode} before {what}: {process.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _gone(pids: list[int]) -> bool:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return not alive


def test_a_killed_search_leaves_nothing_running_and_the_same_command_continues(repo, capsys):
    from pipeline.search.runner import run_search

    name = "yamltrain-search"
    search = _start(repo)
    # Two trials start at once, a third as soon as one ends: so a moment comes when one is complete and
    # another running, whatever their order; then kill -9.
    _wait(
        lambda: (
            TrialState.COMPLETE in _states(repo, name)
            and TrialState.RUNNING in _states(repo, name)
            and bool(psutil.Process(search.pid).children())
        ),
        240,
        "a complete and a running trial",
        search,
    )
    family = [p.pid for p in psutil.Process(search.pid).children(recursive=True)]
    assert family, "the running trial has processes"
    search.send_signal(signal.SIGKILL)
    search.wait()
    _wait(lambda: _gone(family), 20, "every process of the killed search to end")
    done_before = {t.user_attrs["dvc_exp"] for t in _study(repo, name).trials if t.state == TrialState.COMPLETE}

    assert run_search(repo / "params.yaml") == 0
    out = capsys.readouterr().out
    assert "of a killed search marked failed" in out
    trials = _study(repo, name).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert any("killed" in t.user_attrs.get("error", "") for t in trials if t.state == TrialState.FAIL)
    shown = sh(repo, "dvc", "exp", "show", "--csv", "--only-changed").stdout
    names = {t.user_attrs["dvc_exp"] for t in complete}
    assert done_before <= names and all(shown.count(f"\n{n},") == 1 for n in names), shown
    best = max(complete, key=lambda t: t.value)
    assert f"apply the best: dvc exp apply {best.user_attrs['dvc_exp']}" in out
    assert all((repo / ".search" / name / f"{plot}.png").is_file() for plot in ("optimization_history",))
    assert sh(repo, "git", "status", "--porcelain").stdout == ""  # .search/ is ignored; trials ran in --temp copies
    assert run_search(repo / "params.yaml", report_only=True) == 0  # --report: the same summary, no trial run
    assert f"apply the best: dvc exp apply {best.user_attrs['dvc_exp']}" in capsys.readouterr().out
    assert len(_study(repo, name).trials) == len(trials)


def test_ctrl_c_stops_every_trial_and_exits_130(repo):
    write_params(repo / "params.yaml", repo / "params.yaml", **{"search.study": "interrupted"})
    sh(repo, "git", "commit", "-qam", "another study")
    search = _start(repo, "--trials", "2")
    _wait(
        lambda: (
            TrialState.RUNNING in _states(repo, "interrupted")
            and any("stages." in " ".join(p.cmdline()) for p in psutil.Process(search.pid).children(recursive=True))
        ),
        120,
        "a trial's stage to run",
        search,
    )
    family = [p.pid for p in psutil.Process(search.pid).children(recursive=True)]
    search.send_signal(signal.SIGINT)
    assert search.wait(timeout=30) == 130
    _wait(lambda: _gone(family), 20, "every trial process to end")
    states = _states(repo, "interrupted")
    assert states and set(states) == {TrialState.FAIL}
    assert all("interrupted" in t.user_attrs["error"] for t in _study(repo, "interrupted").trials)
