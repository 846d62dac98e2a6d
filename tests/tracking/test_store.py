"""Where the MLflow store is: relative SQLite paths, the refused file store, a real `dvc exp run --temp`
logging into the original repo's store, and the semantic check of tracking.uri."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config.errors import ConfigError, PipelineError
from pipeline.config.params import load_params
from pipeline.tracking import store as tracking_store
from tests.conftest import REPO, write_params
from tests.tracking.conftest import git, git_repo

DVC = Path(sys.executable).with_name("dvc")


# --- where the store is -------------------------------------------------------------------------


def test_relative_sqlite_resolves_against_the_repo_root_others_unchanged(tmp_path, monkeypatch):
    assert tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_store.resolve_tracking_uri("sqlite:///runs/m.db", tmp_path) == f"sqlite:///{tmp_path / 'runs/m.db'}"
    assert tracking_store.resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert tracking_store.resolve_tracking_uri("https://mlflow.example.com/", tmp_path) == "https://mlflow.example.com"
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")  # the env var wins, same rules
    assert tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'other.db'}"


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns", "file:///tmp/mlruns"])
def test_file_store_is_refused_unless_opted_in(uri, tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match=r"file store .* use sqlite:///mlflow\.db"):
        tracking_store.resolve_tracking_uri(uri, tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert tracking_store.resolve_tracking_uri(uri, tmp_path).startswith("file:///")


@pytest.mark.parametrize("workspace", [".dvc/tmp/exps/standalone/tmpab12cd", ".dvc/tmp/exps/tmpab12cd"])
def test_dvc_temp_workspace_resolves_to_the_original_repo(tmp_path, workspace):
    repo = git_repo(tmp_path / "repo")
    copy = repo / workspace
    (copy / "project").mkdir(parents=True)
    (repo / "project").mkdir()
    assert tracking_store.original_repo_root(copy) == repo
    assert tracking_store.original_repo_root(copy / "project") == repo / "project"  # dvc repo in a git subdir
    assert tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", copy) == f"sqlite:///{repo / 'mlflow.db'}"
    assert tracking_store.original_repo_root(repo) == repo


@pytest.mark.slow
def test_real_dvc_exp_run_temp_logs_into_the_original_repos_store(store, tmp_path):
    """`dvc exp run --temp` runs the stage in .dvc/tmp/exps/...; its run must land in <repo>/mlflow.db."""
    repo = git_repo(tmp_path / "repo")
    shutil.copy(store / "mlflow.db", repo / "mlflow.db")  # already migrated: saves seconds
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / "log_run.py").write_text(
        textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, sys.argv[1])
        from pipeline.tracking import run as tracking, store as tracking_store
        cfg = {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "exp", "run_name": None}
        with tracking.start_run(cfg, repo_root=os.getcwd(), run_name="hint") as run:
            run.log_params({"lr": 0.2})
        json.dump({"cwd": os.getcwd(), "run_id": run.run_id}, open("out.json", "w"))
    """)
    )
    (repo / "dvc.yaml").write_text(
        json.dumps(
            {
                "stages": {
                    "log": {
                        "cmd": f"{sys.executable} log_run.py {REPO}",
                        "deps": ["log_run.py"],
                        "params": ["lr"],
                        "outs": [{"out.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["DVC_NO_ANALYTICS"] = "1"
    (repo / ".dvc").mkdir()  # what `dvc init` writes, without paying for another dvc start
    (repo / ".dvc" / "config").write_text("")
    (repo / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    done = subprocess.run(
        [DVC, "exp", "run", "--temp", "-n", "tmp-exp", "-S", "lr=0.2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_experiment_by_name("exp").experiment_id]
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tmp-exp" and run.data.tags["dvc.exp_name"] == "tmp-exp"
    assert run.data.params == {"lr": "0.2"}
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing was written into the copy
    assert not (repo / "out.json").exists()  # the stage really ran in the temporary copy


# --- the semantic check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", None),
        ("http://127.0.0.1:5000", None),
        ("databricks", None),
        ("databricks://my-profile", None),
        ("./mlruns", "file store"),
        ("sqlte:///mlflow.db", "did you mean 'sqlite'"),
        ("sqlite://mlflow.db", "sqlite:///mlflow.db"),
        ("sqlite:///:memory:", "names no database file"),
        ("http://", "names no host"),
        ("postgresql://u@db:5432/mlflow", "driver 'psycopg2'"),
    ],
)
def test_uri_problems(uri, expected):
    if expected and "driver" in expected and __import__("importlib").util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    reason = tracking_store.uri_problem(uri)
    assert (reason is None) if expected is None else (expected in reason)


def test_validate_reports_a_bad_tracking_uri_at_its_line(tmp_path, monkeypatch):
    path = write_params(tmp_path / "params.yaml", replace={"  uri: sqlite:///mlflow.db": "  uri: ./mlruns"})
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "uri: ./mlruns" in row)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    mine = [p for p in info.value.problems if p.key.startswith("tracking")]
    assert [(p.key, p.line) for p in mine] == [("tracking.uri", line)] and "file store" in mine[0].message
    write_params(path, replace={"  enabled: true": "  enabled: false", "sqlite:///mlflow.db": "./mlruns"})
    try:
        load_params(path)
    except ConfigError as exc:
        assert not [p for p in exc.problems if p.key.startswith("tracking")]


def test_the_check_reports_a_bad_environment_uri(tmp_path, monkeypatch):
    params = load_params(write_params(tmp_path / "params.yaml"), semantic=False)
    assert tracking_store.check_tracking(params) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    [problem] = tracking_store.check_tracking(params)
    assert problem.key == "tracking.uri" and "overridden by MLFLOW_TRACKING_URI='mlruns'" in problem.message
