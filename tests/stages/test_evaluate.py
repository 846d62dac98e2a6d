"""The evaluate stage end to end through ``main(["--params", ...])`` on tiny workspaces built by the
real split and model stages, with train's outputs faked from the initial weights: the segmentation and
classification outputs checked against the manifest, clear errors before any work, the test metrics in
train's MLflow run, and old outputs left whole on a failure. The test-set pass itself
(pipeline.training.evaluation) is tested in tests/training/test_evaluation.py."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipeline.training.metrics import segmentation_metrics
from stages import evaluate as evaluate_stage
from tests.conftest import make_workspace, write_params

SIZE = 32  # make_workspace's images


def evaluate_workspace(root: Path, task: str) -> Path:
    """``make_workspace`` for ``task`` with train's outputs faked from the initial weights, so that
    evaluate is next. Returns its params.yaml."""
    path = make_workspace(root, task=task)
    (root / "outputs/train").mkdir(parents=True)
    shutil.copy(root / "outputs/model/init.safetensors", root / "outputs/train/best.safetensors")
    (root / "outputs/train/run.json").write_text(json.dumps({"run_id": None, "tracking_uri": None}))
    return path


def copy_workspace(params: Path, root: Path) -> Path:
    """A copy in ``root`` of the workspace of ``params``, without evaluate's outputs; its params.yaml."""
    shutil.copytree(params.parent, root)
    shutil.rmtree(root / "outputs/evaluate", ignore_errors=True)
    return root / "params.yaml"


def run_evaluate(params: Path) -> tuple[Path, dict, dict]:
    """Run the evaluate stage, which must succeed; its output folder, metrics.json and the manifest."""
    assert evaluate_stage.main(["--params", str(params)]) == 0
    out = params.parent / "outputs/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((params.parent / "outputs/split/manifest.json").read_text())
    return out, metrics, manifest


@pytest.fixture(scope="module")
def segmentation_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluate_workspace(tmp_path_factory.mktemp("seg"), "segmentation")


@pytest.fixture(scope="module")
def classification_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluate_workspace(tmp_path_factory.mktemp("cls"), "classification")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_per_class(out: Path) -> dict[str, dict[str, float]]:
    """per_class.csv (class,metric,value rows) as {class: {metric: value}}."""
    table: dict[str, dict[str, float]] = {}
    for row in read_csv(out / "per_class.csv"):
        table.setdefault(row["class"], {})[row["metric"]] = float(row["value"])
    return table


def per_class_scores(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """summary.json's per-class scores under the meter's own keys, ``<score>/<class>``."""
    return {f"{score}/{name}": value for name, row in per_class.items() for score, value in row.items()}


def test_segmentation_end_to_end(segmentation_workspace: Path):
    out, metrics, manifest = run_evaluate(segmentation_workspace)
    summary = json.loads((out / "summary.json").read_text())
    n_test = len(manifest["splits"]["test"])
    assert summary["images"] == n_test > 0
    assert summary["class_names"] == ["background", "foreground"]
    matrix = torch.tensor(summary["confusion_matrix"])
    # metrics.json holds headline scores only: what `dvc metrics show` and `dvc exp show` list as columns
    assert all(isinstance(v, float) for v in metrics.values()) and "images" not in metrics
    assert sorted(metrics) == ["dice", "iou", "pixel_accuracy", "test_loss"]  # per class: summary.json
    assert matrix.sum().item() == n_test * SIZE * SIZE  # every test pixel counted once
    expected = segmentation_metrics(matrix, ["background", "foreground"])
    found = {**metrics, **per_class_scores(summary["per_class"])}
    for key in ("dice", "iou", "pixel_accuracy", "dice/background", "dice/foreground", "iou/foreground"):
        assert found[key] == pytest.approx(expected[key]) and 0.0 <= found[key] <= 1.0
    assert list(summary["per_class"]) == ["background", "foreground"]
    assert read_per_class(out) == summary["per_class"]  # the plot draws the record's numbers
    assert 0 < metrics["test_loss"] < 10
    rows = read_csv(out / "confusion.csv")
    assert len(rows) == n_test * SIZE * SIZE  # 20 images * 1024 px < 10,000: every pixel
    assert {r["actual"] for r in rows} <= {"background", "foreground"}
    counts = sum(1 for r in rows if (r["actual"], r["predicted"]) == ("foreground", "foreground"))
    assert counts == matrix[1, 1].item()
    with Image.open(out / "overlays.png") as overlays:  # 3 rows of 3 tiles of 160 px
        assert overlays.format == "PNG" and overlays.size == (3 * 160 + 4 * 6, 16 + 6 + 3 * (16 + 160 + 6))
    with Image.open(out / "confusion.png") as confusion:
        assert confusion.format == "PNG" and min(confusion.size) > 100


def test_classification_end_to_end(classification_workspace: Path):
    out, metrics, manifest = run_evaluate(classification_workspace)
    test = manifest["splits"]["test"]
    names = manifest["class_names"]
    rows = read_csv(out / "confusion.csv")
    assert [r["image"] for r in rows] == [e["image"] for e in test]  # one row per test image
    assert [r["actual"] for r in rows] == [names[e["label"]] for e in test]
    summary = json.loads((out / "summary.json").read_text())
    matrix = summary["confusion_matrix"]
    assert all(isinstance(v, float) for v in metrics.values())
    assert sorted(metrics) == ["accuracy", "macro_f1", "test_loss"]  # per class: summary.json and the plot
    for i, actual in enumerate(names):
        for j, predicted in enumerate(names):
            assert matrix[i][j] == sum(1 for r in rows if (r["actual"], r["predicted"]) == (actual, predicted))
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    assert list(summary["per_class"]) == names and read_per_class(out) == summary["per_class"]
    for name in names:
        for kind in ("precision", "recall", "f1"):
            assert 0.0 <= summary["per_class"][name][kind] <= 1.0
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["test_loss"] > 0
    with Image.open(out / "overlays.png") as overlays:  # 3 tiles in one row
        assert overlays.size == (3 * (160 + 12) + 6, 160 + 2 * 16 + 12 + 6)
    with Image.open(out / "confusion.png") as confusion:
        assert confusion.format == "PNG"


def test_missing_weights_is_a_clear_error(segmentation_workspace: Path, tmp_path: Path, capsys):
    params = copy_workspace(segmentation_workspace, tmp_path / "ws")
    workspace = params.parent
    (workspace / "outputs/train/best.safetensors").unlink()
    assert evaluate_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "best.safetensors not found; run the train stage first" in err
    assert not (workspace / "outputs/evaluate").exists()


def test_unreachable_tracking_server_fails_fast_before_evaluating(segmentation_workspace: Path, tmp_path: Path, capsys):
    params = copy_workspace(segmentation_workspace, tmp_path / "ws")
    workspace = params.parent
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_params(params, params, **{"tracking.enabled": True, "tracking.uri": f"http://127.0.0.1:{port}"})
    (workspace / "outputs/train/run.json").write_text(json.dumps({"run_id": "0123abcd", "tracking_uri": None}))
    started = time.perf_counter()
    assert evaluate_stage.main(["--params", str(params)]) == 2
    assert time.perf_counter() - started < 10
    assert "not reachable" in capsys.readouterr().err
    assert not (workspace / "outputs/evaluate").exists()


@pytest.mark.slow
def test_test_metrics_and_plots_go_into_trains_mlflow_run(
    segmentation_workspace: Path, tmp_path: Path, mlflow_server, monkeypatch: pytest.MonkeyPatch
):
    from mlflow import MlflowClient

    from pipeline.tracking import run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = copy_workspace(segmentation_workspace, tmp_path / "ws")
    workspace = params.parent
    write_params(
        params,
        params,
        **{"tracking.enabled": True, "tracking.uri": mlflow_server.uri, "tracking.experiment": "evaluate-test"},
    )
    tracking_params = yaml.safe_load(params.read_text())["tracking"]
    with tracking.start_run(tracking_params, repo_root=workspace, run_name="train") as train_run:
        train_run.log_metrics({"val_dice": 0.5}, step=1)  # what train leaves behind
    (workspace / "outputs/train/run.json").write_text(
        json.dumps({"run_id": train_run.run_id, "tracking_uri": train_run.uri})
    )

    assert evaluate_stage.main(["--params", str(params)]) == 0
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(train_run.run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    metrics = json.loads((workspace / "outputs/evaluate/metrics.json").read_text())
    assert run.data.metrics["test_dice"] == pytest.approx(metrics["dice"])
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    summary = json.loads((workspace / "outputs/evaluate/summary.json").read_text())
    assert run.data.metrics["test_dice/foreground"] == pytest.approx(summary["per_class"]["foreground"]["dice"])
    assert run.data.metrics["val_dice"] == 0.5
    assert run.data.params["evaluate.overlays"] == "3"
    assert run.info.status == "FINISHED"
    assert "test_images" not in run.data.metrics  # a count: a tag
    assert run.data.tags["test_images"] == str(summary["images"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}  # at the root: the compare view's level
    assert logged == {
        "test_metrics.json",
        "test_summary.json",
        "per_class.csv",
        "confusion.csv",
        "confusion.png",
        "overlays.png",
    }


def test_a_failure_midway_leaves_the_previous_outputs_whole(
    segmentation_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipeline import plots
    from pipeline.config.errors import PipelineError

    params = copy_workspace(segmentation_workspace, tmp_path / "ws")
    old = params.parent / "outputs/evaluate"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"dice": 0.25}\n')

    def broken(*args: object, **kwargs: object) -> None:
        raise PipelineError("drawing failed")

    monkeypatch.setattr(plots, "draw_segmentation_overlays", broken)
    assert evaluate_stage.main(["--params", str(params)]) == 2
    assert sorted(p.name for p in old.iterdir()) == ["metrics.json"]  # no new csv/png beside it
    assert (old / "metrics.json").read_text() == '{"dice": 0.25}\n'
    assert not [p for p in old.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
