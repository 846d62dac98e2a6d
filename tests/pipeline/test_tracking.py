"""MLflow tracking against real stores: a SQLite file, a real `mlflow server`, a real `dvc exp run --temp`."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.tracking import run as tracking, store as tracking_store
from pipeline.components import load_params
from pipeline.config.errors import ConfigError, PipelineError

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")


def _cfg(uri: str = "sqlite:///mlflow.db", **over) -> dict:
    return {"enabled": True, "uri": uri, "experiment": "tests", "run_name": None, **over}


OUTSIDE_ENV = ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(autouse=True)
def _no_outside_tracking_env(monkeypatch):
    for name in OUTSIDE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A repo root with a migrated sqlite store (creating one costs seconds, so tests share it)."""
    root = tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as patch:
        for name in OUTSIDE_ENV:
            patch.delenv(name, raising=False)
        tracking.start_run(_cfg(), repo_root=root).end()
    return root


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "t@example.com")
    _git(path, "config", "user.name", "t")
    return path


# --- logging into a real SQLite store -----------------------------------------------------------

def test_mlflow_limits_match_mlflow():
    from mlflow.utils import validation as v

    assert (tracking.MAX_PARAMS_TAGS_PER_BATCH, tracking.MAX_METRICS_PER_BATCH, tracking.MAX_PARAM_VAL_LENGTH,
            tracking.MAX_TAG_VAL_LENGTH, tracking.MAX_KEY_LENGTH) == (
        v.MAX_PARAMS_TAGS_PER_BATCH, v.MAX_METRICS_PER_BATCH, v.MAX_PARAM_VAL_LENGTH,
        v.MAX_TAG_VAL_LENGTH, v.MAX_ENTITY_KEY_LENGTH)


def test_params_go_in_batches_of_100_long_values_truncated_keys_sanitised(store, monkeypatch):
    run = tracking.start_run(_cfg(), repo_root=store, run_name="seg-unet")
    sizes = []
    real_log_batch = run.client.log_batch
    monkeypatch.setattr(run.client, "log_batch",
                        lambda run_id, **kw: (sizes.append(len(kw.get("params", []))), real_log_batch(run_id, **kw)))
    flat = {f"section.key{i}": i for i in range(247)}
    flat |= {"augment.train": [{"Fliplr": {"p": 0.5}}], "long": "x" * 7000, "a b/c[0]": True, "none": None}
    assert run.log_params(flat) == {}
    run.end()
    params = MlflowClient(run.uri).get_run(run.run_id).data.params
    assert sizes == [100, 100, 51]
    assert len(params) == 251
    assert params["section.key246"] == "246"
    assert params["augment.train"] == '[{"Fliplr": {"p": 0.5}}]'
    assert len(params["long"]) == 6000 and params["long"].endswith(tracking.TRUNCATED)
    assert params["a b/c_0_"] == "true" and params["none"] == "null"


def test_metric_history_has_every_step_and_artifacts_are_stored(store, tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "history.csv").write_text("epoch,loss\n1,0.9\n")
    (tmp_path / "params.json").write_text("{}")
    with tracking.start_run(_cfg(), repo_root=store) as run:
        for epoch, loss in enumerate([0.9, 0.5, 0.25], start=1):
            run.log_metrics({"train_loss": loss, "val_dice": 1 - loss}, step=epoch)
        run.log_artifact(tmp_path / "params.json")
        run.log_artifact(tmp_path / "plots", "plots")
        with pytest.raises(PipelineError, match="missing.png does not exist"):
            run.log_artifact(tmp_path / "missing.png")
    client = MlflowClient(run.uri)
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5), (3, 0.25)]
    assert [m.value for m in client.get_metric_history(run.run_id, "val_dice")] == pytest.approx([0.1, 0.5, 0.75])
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"params.json", "plots"}
    assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == ["plots/history.csv"]
    assert (store / "mlartifacts" / run.run_id / "artifacts" / "plots" / "history.csv").read_text().startswith("epoch")
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_resume_by_run_id_appends_to_the_same_run(store):
    cfg = _cfg(run_name="resume-me")
    with tracking.start_run(cfg, repo_root=store, tags={"stage": "train"}) as first:
        first.log_params({"train.epochs": 2, "evaluate.threshold": 0.5})
        first.log_metrics({"loss": 1.0}, step=1)
    with tracking.start_run(cfg, repo_root=store, run_id=first.run_id, tags={"stage": "evaluate"}) as again:
        assert again.run_id == first.run_id
        assert MlflowClient(again.uri).get_run(again.run_id).info.status == "RUNNING"
        changed = again.log_params({"train.epochs": 2, "evaluate.threshold": 0.7, "evaluate.batch_size": 32})
        again.log_metrics({"loss": 0.5}, step=2)
        again.log_metrics({"test_dice": 0.8})
    run = MlflowClient(first.uri).get_run(first.run_id)
    assert changed == {"evaluate.threshold": "0.7"}
    assert run.data.params == {"train.epochs": "2", "evaluate.threshold": "0.5", "evaluate.batch_size": "32"}
    assert run.data.tags["changed_param.evaluate.threshold"] == "0.7" and run.data.tags["stage"] == "evaluate"
    assert [(m.step, m.value) for m in MlflowClient(first.uri).get_metric_history(run.info.run_id, "loss")] == [
        (1, 1.0), (2, 0.5)]
    assert run.data.metrics["test_dice"] == 0.8 and run.info.status == "FINISHED"
    assert len(MlflowClient(first.uri).search_runs([run.info.experiment_id], "run_name = 'resume-me'")) == 1


def test_unknown_run_id_starts_a_new_run_and_says_so(store, capsys):
    run = tracking.start_run(_cfg(), repo_root=store, run_id="0" * 32)
    run.end()
    assert run.run_id != "0" * 32
    assert f"run {'0' * 32} is not in" in capsys.readouterr().err


def test_a_failing_or_interrupted_body_marks_the_run(store):
    for error, status in ((ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")):
        with pytest.raises(error):
            with tracking.start_run(_cfg(), repo_root=store) as run:
                raise error()
        assert MlflowClient(run.uri).get_run(run.run_id).info.status == status


def test_disabled_tracking_is_a_no_op_with_the_same_interface(tmp_path):
    run = tracking.start_run(_cfg(enabled=False), repo_root=tmp_path)
    with run:
        assert run.log_params({"a": 1}) == {}
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_artifact(tmp_path / "not-even-there")
        run.set_tags({"x": "y"})
    assert run.run_id is None and list(tmp_path.iterdir()) == []
    public = {n for n in dir(tracking.TrackingRun) if not n.startswith("_")}
    assert public <= set(dir(run))


def test_run_names_and_default_tags(store, monkeypatch):
    now = dt.datetime(2024, 5, 6, 7, 8, 9)
    assert tracking.run_name_for(_cfg(), "segmentation-unet", now=now) == "segmentation-unet-20240506-070809"
    monkeypatch.setenv("DVC_EXP_NAME", "gaunt-bout")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert tracking.run_name_for(_cfg(), "segmentation-unet") == "gaunt-bout"
    assert tracking.run_name_for(_cfg(run_name="baseline"), "x") == "baseline"
    import torch  # loaded, as in train and evaluate: versions and device come from it

    run = tracking.start_run(_cfg(), repo_root=store, tags={"dataset.fingerprint": "f00d"})
    run.end()
    got = MlflowClient(run.uri).get_run(run.run_id)
    assert got.info.run_name == "gaunt-bout"
    tags = got.data.tags
    assert tags["dvc.exp_name"] == "gaunt-bout" and tags["dvc.exp_baseline"] == "abc123"
    assert tags["dataset.fingerprint"] == "f00d" and tags["device"] == "cpu"
    assert tags["torch.version"] == torch.__version__ and tags["host"] == socket.gethostname()


def test_tags_include_the_git_commit(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("a: 1\n")
    assert "mlflow.source.git.commit" not in tracking.default_tags(repo)
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-qm", "init")
    tags = tracking.default_tags(repo, device="cuda:0")
    assert tags["mlflow.source.git.commit"] == _git(repo, "rev-parse", "HEAD")
    assert tags["git.dirty"] == "false" and tags["device"] == "cuda:0"
    (repo / "params.yaml").write_text("a: 2\n")
    assert tracking.default_tags(repo)["git.dirty"] == "true"


# --- a real tracking server ---------------------------------------------------------------------

def test_a_run_logged_over_http_is_visible_through_the_client(mlflow_server, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01")
    with tracking.start_run(_cfg(mlflow_server.uri + "/"), repo_root=tmp_path, run_name="cls-resnet") as run:
        run.log_params({f"k{i}": i for i in range(120)})
        run.log_metrics({"val_accuracy": 0.75}, step=1)
        run.log_metrics({"val_accuracy": 0.875}, step=2)
        run.log_artifact(tmp_path / "weights.bin", "model")
    assert run.uri == mlflow_server.uri
    client = MlflowClient(mlflow_server.uri)
    got = client.get_run(run.run_id)
    assert len(got.data.params) == 120 and got.info.status == "FINISHED"
    assert got.info.run_name.startswith("cls-resnet-")
    assert [m.value for m in client.get_metric_history(run.run_id, "val_accuracy")] == [0.75, 0.875]
    assert [a.path for a in client.list_artifacts(run.run_id, "model")] == ["model/weights.bin"]
    assert list(mlflow_server.artifacts_dir.rglob("weights.bin"))
    assert not (tmp_path / "mlflow.db").exists()


def test_environment_uri_overrides_params(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    assert tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == mlflow_server.uri
    run = tracking.start_run(_cfg(experiment="from-env"), repo_root=tmp_path)
    run.end()
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("from-env").experiment_id == run.experiment_id


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path):
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(PipelineError) as info:
            tracking.start_run(_cfg(uri), repo_root=tmp_path)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"tracking server {uri} is not reachable (")
    assert message.endswith("start it or set tracking.uri / MLFLOW_TRACKING_URI")


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
    with pytest.raises(PipelineError, match="file store .* use sqlite:///mlflow.db"):
        tracking_store.resolve_tracking_uri(uri, tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert tracking_store.resolve_tracking_uri(uri, tmp_path).startswith("file:///")


@pytest.mark.parametrize("workspace", [".dvc/tmp/exps/standalone/tmpab12cd", ".dvc/tmp/exps/tmpab12cd"])
def test_dvc_temp_workspace_resolves_to_the_original_repo(tmp_path, workspace):
    repo = _git_repo(tmp_path / "repo")
    copy = repo / workspace
    (copy / "project").mkdir(parents=True)
    (repo / "project").mkdir()
    assert tracking_store.original_repo_root(copy) == repo
    assert tracking_store.original_repo_root(copy / "project") == repo / "project"  # dvc repo in a git subdir
    assert tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", copy) == f"sqlite:///{repo / 'mlflow.db'}"
    assert tracking_store.original_repo_root(repo) == repo


def test_real_dvc_exp_run_temp_logs_into_the_original_repos_store(store, tmp_path):
    """`dvc exp run --temp` runs the stage in .dvc/tmp/exps/...; its run must land in <repo>/mlflow.db."""
    repo = _git_repo(tmp_path / "repo")
    shutil.copy(store / "mlflow.db", repo / "mlflow.db")  # already migrated: saves seconds
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / "log_run.py").write_text(textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, sys.argv[1])
        from pipeline.tracking import run as tracking, store as tracking_store
        cfg = {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "exp", "run_name": None}
        with tracking.start_run(cfg, repo_root=os.getcwd(), run_name="hint") as run:
            run.log_params({"lr": 0.2})
        json.dump({"cwd": os.getcwd(), "run_id": run.run_id}, open("out.json", "w"))
    """))
    (repo / "dvc.yaml").write_text(json.dumps({"stages": {"log": {
        "cmd": f"{sys.executable} log_run.py {REPO}", "deps": ["log_run.py"], "params": ["lr"],
        "outs": [{"out.json": {"cache": False}}]}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["DVC_NO_ANALYTICS"] = "1"
    (repo / ".dvc").mkdir()  # what `dvc init` writes, without paying for another dvc start
    (repo / ".dvc" / "config").write_text("")
    (repo / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    done = subprocess.run([DVC, "exp", "run", "--temp", "-n", "tmp-exp", "-S", "lr=0.2"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_experiment_by_name("exp").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tmp-exp" and run.data.tags["dvc.exp_name"] == "tmp-exp"
    assert run.data.params == {"lr": "0.2"}
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing was written into the copy
    assert not (repo / "out.json").exists()  # the stage really ran in the temporary copy


# --- the semantic check -------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "expected"), [
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
])
def test_uri_problems(uri, expected):
    if expected and "driver" in expected and __import__("importlib").util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    reason = tracking_store.uri_problem(uri)
    assert (reason is None) if expected is None else (expected in reason)


def test_validate_reports_a_bad_tracking_uri_at_its_line(tmp_path, monkeypatch):
    text = (REPO / "params.yaml").read_text()
    assert "  uri: sqlite:///mlflow.db" in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  uri: sqlite:///mlflow.db", "  uri: ./mlruns", 1))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "uri: ./mlruns" in row)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    mine = [p for p in info.value.problems if p.key.startswith("tracking")]
    assert [(p.key, p.line) for p in mine] == [("tracking.uri", line)] and "file store" in mine[0].message
    path.write_text(text.replace("  enabled: true", "  enabled: false", 1).replace("sqlite:///mlflow.db", "./mlruns"))
    try:
        load_params(path)
    except ConfigError as exc:
        assert not [p for p in exc.problems if p.key.startswith("tracking")]


def test_the_check_reports_a_bad_environment_uri(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params = load_params(path, semantic=False)
    assert tracking_store._check_tracking(params) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    [problem] = tracking_store._check_tracking(params)
    assert problem.key == "tracking.uri" and "overridden by MLFLOW_TRACKING_URI='mlruns'" in problem.message
