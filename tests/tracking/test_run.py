"""MLflow runs against real stores: a SQLite file and a real `mlflow server`."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time

import pytest
from mlflow import MlflowClient

from pipeline.config.errors import PipelineError
from pipeline.tracking import naming
from pipeline.tracking import run as tracking
from pipeline.tracking import store as tracking_store
from tests.tracking.conftest import git, git_repo


def _cfg(uri: str = "sqlite:///mlflow.db", **over) -> dict:
    return {"enabled": True, "uri": uri, "experiment": "tests", "run_name": None, **over}


# --- logging into a real SQLite store -----------------------------------------------------------


def test_mlflow_limits_match_mlflow():
    from mlflow.utils import validation as v

    assert (
        naming.MAX_PARAMS_TAGS_PER_BATCH,
        naming.MAX_METRICS_PER_BATCH,
        naming.MAX_PARAM_VAL_LENGTH,
        naming.MAX_TAG_VAL_LENGTH,
        naming.MAX_KEY_LENGTH,
        naming.MAX_DATASET_DIGEST_SIZE,
        naming.MAX_INPUT_TAG_VALUE_SIZE,
    ) == (
        v.MAX_PARAMS_TAGS_PER_BATCH,
        v.MAX_METRICS_PER_BATCH,
        v.MAX_PARAM_VAL_LENGTH,
        v.MAX_TAG_VAL_LENGTH,
        v.MAX_ENTITY_KEY_LENGTH,
        v.MAX_DATASET_DIGEST_SIZE,
        v.MAX_INPUT_TAG_VALUE_SIZE,
    )


def test_params_go_in_batches_of_100_long_values_truncated_keys_sanitised(store, monkeypatch):
    run = tracking.start_run(_cfg(), repo_root=store, run_name="seg-unet")
    sizes = []
    real_log_batch = run.client.log_batch
    monkeypatch.setattr(
        run.client,
        "log_batch",
        lambda run_id, **kw: (sizes.append(len(kw.get("params", []))), real_log_batch(run_id, **kw)),
    )
    flat = {f"section.key{i}": i for i in range(247)}
    flat |= {"augment.train": [{"Fliplr": {"p": 0.5}}], "long": "x" * 7000, "a b/c[0]": True, "none": None}
    assert run.log_params(flat) == {}
    run.end()
    params = MlflowClient(run.uri).get_run(run.run_id).data.params
    assert sizes == [100, 100, 51]
    assert len(params) == 251
    assert params["section.key246"] == "246"
    assert params["augment.train"] == '[{"Fliplr": {"p": 0.5}}]'
    assert len(params["long"]) == 6000 and params["long"].endswith(naming.TRUNCATED)
    assert params["a b/c_0_"] == "true" and params["none"] == "null"


def test_metric_history_has_every_step_and_artifacts_are_stored(store, tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "history.csv").write_text("epoch,loss\n1,0.9\n")
    (tmp_path / "params.json").write_text("{}")
    (tmp_path / "preview.png").write_bytes(b"png")
    with tracking.start_run(_cfg(), repo_root=store) as run:
        for epoch, loss in enumerate([0.9, 0.5, 0.25], start=1):
            run.log_metrics({"train_loss": loss, "val_dice": 1 - loss}, step=epoch)
        run.log_artifact(tmp_path / "params.json")
        run.log_artifact(tmp_path / "preview.png", name="augment_preview.png")  # at the root, renamed
        run.log_artifact(tmp_path / "plots", "plots")
        with pytest.raises(PipelineError, match=r"missing\.png does not exist"):
            run.log_artifact(tmp_path / "missing.png")
    client = MlflowClient(run.uri)
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5), (3, 0.25)]
    assert [m.value for m in client.get_metric_history(run.run_id, "val_dice")] == pytest.approx([0.1, 0.5, 0.75])
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"params.json", "augment_preview.png", "plots"}
    assert (tmp_path / "preview.png").exists()  # the original stays where it is
    assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == ["plots/history.csv"]
    assert (store / "mlartifacts" / run.run_id / "artifacts" / "plots" / "history.csv").read_text().startswith("epoch")
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_dataset_is_shared_by_name_and_digest_its_input_tags_are_per_run(store):
    fingerprint = "0123456789abcdef" * 4  # 64 characters, as the split's; MLflow keeps 36
    runs = []
    for source, train in (("/first/data/shapes", 30), ("/second/data/shapes", 40)):
        with tracking.start_run(_cfg(experiment="datasets"), repo_root=store) as run:
            run.log_dataset(
                "data/shapes",
                digest=fingerprint,
                source=source,
                profile={"fingerprint": fingerprint},
                tags={"split.train": train, "task": "x" * 600},
            )
        runs.append(MlflowClient(run.uri).get_run(run.run_id).inputs.dataset_inputs)
    for (got,), train in zip(runs, ("30", "40")):
        assert (got.dataset.name, got.dataset.digest) == ("data/shapes", fingerprint[:36])
        assert json.loads(got.dataset.profile) == {"fingerprint": fingerprint}
        assert json.loads(got.dataset.source) == {"uri": "/first/data/shapes"}  # the first run's, shared
        tags = {t.key: t.value for t in got.tags}
        assert tags["mlflow.data.context"] == "train" and tags["split.train"] == train
        assert len(tags["task"]) == 500 and tags["task"].endswith(naming.TRUNCATED)


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
        (1, 1.0),
        (2, 0.5),
    ]
    assert run.data.metrics["test_dice"] == 0.8 and run.info.status == "FINISHED"
    assert len(MlflowClient(first.uri).search_runs([run.info.experiment_id], "run_name = 'resume-me'")) == 1


def test_unknown_run_id_starts_a_new_run_and_says_so(store, capsys):
    run = tracking.start_run(_cfg(), repo_root=store, run_id="0" * 32)
    run.end()
    assert run.run_id != "0" * 32
    assert f"run {'0' * 32} is not in" in capsys.readouterr().err


def test_a_failing_or_interrupted_body_marks_the_run(store):
    for error, status in ((ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")):
        with pytest.raises(error), tracking.start_run(_cfg(), repo_root=store) as run:
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
    assert naming.run_name_for(_cfg(), "segmentation-unet", now=now) == "segmentation-unet-20240506-070809"
    monkeypatch.setenv("DVC_EXP_NAME", "gaunt-bout")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert naming.run_name_for(_cfg(), "segmentation-unet") == "gaunt-bout"
    assert naming.run_name_for(_cfg(run_name="baseline"), "x") == "baseline"
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
    repo = git_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("a: 1\n")
    assert "mlflow.source.git.commit" not in naming.default_tags(repo)
    git(repo, "add", "params.yaml")
    git(repo, "commit", "-qm", "init")
    tags = naming.default_tags(repo, device="cuda:0")
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["git.dirty"] == "false" and tags["device"] == "cuda:0"
    (repo / "params.yaml").write_text("a: 2\n")
    assert naming.default_tags(repo)["git.dirty"] == "true"


# --- a real tracking server ---------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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
