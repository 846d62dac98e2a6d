"""The evaluate stage: its test-set loop (pipeline.training.evaluation) against a model with known
answers, and end to end through ``main(["--params", ...])`` on tiny generated workspaces built by the
real split and model stages."""
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

from stages import evaluate as evaluate_stage
from stages import model as model_stage
from stages import split as split_stage
from pipeline.training import evaluation
from pipeline.training.device import MEAN, STD
from pipeline.training.loss import build_loss
from pipeline.training.metrics import segmentation_metrics
from pipeline.training.precision import resolve_precision
from pipeline.data.synthetic import generate_classification, generate_segmentation

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
FP32 = {"dtype": "fp32", "channels_last": False, "tf32": False, "compile": False}
CFG = {"batch_size": 3, "workers": 0, "device": "cpu", "threshold": 0.5, "overlays": 2,
       "confusion_sample": 10_000}


class RedThreshold(torch.nn.Module):
    """Predicts foreground exactly where the red channel exceeds 128 (undoing the normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1] * STD[0] + MEAN[0]
        return (red - 128.5 / 255) * 1000


def red_dataset(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images whose red channel is 255 inside a mask (the target) and 0 elsewhere."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        mask = (torch.rand(SIZE, SIZE, generator=gen) > 0.6).to(torch.uint8)
        image = torch.randint(0, 256, (3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
        image[0] = mask * 255
        samples.append((image, mask))
    return samples


def run_loop(model: torch.nn.Module, data: list, **cfg: object) -> dict:
    device = torch.device("cpu")
    loss = build_loss({"name": "dice_bce", "params": {}, "terms": []}, task="segmentation", num_outputs=1)
    return evaluation.run_test_set(model, data, loss, resolve_precision(FP32, device), device,
                                   {**CFG, **cfg}, task="segmentation",
                                   class_names=["background", "foreground"], image_hw=(SIZE, SIZE))


def test_loop_scores_a_perfect_model_perfectly():
    data = red_dataset()
    results = run_loop(RedThreshold(), data)
    foreground = sum(int(mask.sum()) for _, mask in data)
    assert results["meter"].confusion_matrix() == [[5 * SIZE * SIZE - foreground, 0], [0, foreground]]
    metrics = results["meter"].compute()
    assert metrics["dice"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    assert results["count"] == 5
    assert len(results["images"]) == 2 and results["images"][0].shape == (SIZE, SIZE, 3)
    assert (results["preds"][1] == data[1][1].numpy()).all()


def test_loop_scores_an_all_background_model_by_hand():
    data = red_dataset()
    results = run_loop(lambda x: torch.full_like(x[:, :1], -5.0), data, confusion_sample=1000)
    foreground = sum(int(mask.sum()) for _, mask in data)
    metrics = results["meter"].compute()
    assert metrics["dice"] == 0.0
    assert metrics["pixel_accuracy"] == pytest.approx(1 - foreground / (5 * SIZE * SIZE))
    # every ceil(5120 / 1000) = 6th pixel of the whole test set, across batch boundaries
    flat = torch.cat([mask.reshape(-1) for _, mask in data]).long()
    assert results["actual"] == flat[::6].tolist()
    assert results["predicted"] == [0] * len(flat[::6])


def test_a_non_finite_loss_is_written_as_null_not_invalid_json(tmp_path: Path, capsys):
    data = red_dataset(3)
    results = run_loop(lambda x: torch.full_like(x[:, :1], float("nan")), data)
    entries = [{"image": f"images/{i}.png", "mask": f"masks/{i}.png"} for i in range(3)]
    metrics = evaluation.write_outputs(tmp_path, "segmentation", ["background", "foreground"],
                                       entries, results)
    assert metrics["test_loss"] is None and "written as null" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["dice"] == 0.0  # NaN logit: background
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.csv", "confusion.png", "metrics.json", "overlays.png"]


def test_mlflow_metrics_are_prefixed_numbers_only():
    got = evaluation.mlflow_metrics({"test_loss": 0.5, "dice": 0.8, "dice/foreground": 0.8,
                                     "images": 3, "confusion_matrix": [[1]], "class_names": ["a"],
                                     "iou": None})
    assert got == {"test_loss": 0.5, "test_dice": 0.8, "test_dice/foreground": 0.8, "test_images": 3.0}


# --- end to end ---------------------------------------------------------------------------------

def make_workspace(root: Path, task: str, **overrides: object) -> Path:
    """A repo-like folder: generated data, params.yaml (tiny model, tracking off), split and model
    stage outputs, and train's outputs faked from the initial weights."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(task=task, image_size=[SIZE, SIZE], num_classes=None)
    if task == "segmentation":
        generate_segmentation(root / "data", n=20, size=SIZE, seed=1)
        params["model"].update(source="unet", name="classic", pretrained=False, freeze="none",
                               unet={"base_channels": 4, "depth": 2, "upsampling": "bilinear"})
        params["loss"] = {"name": "dice_bce", "params": {}, "terms": []}
    else:
        generate_classification(root / "data", n_per_class=7, size=SIZE, seed=1)
        params["model"].update(source="timm", name="test_resnet", pretrained=False, freeze="none")
        params["loss"] = {"name": "cross_entropy", "params": {}, "terms": []}
    params["data"]["root"] = "data"
    params["evaluate"].update(batch_size=4, workers=0, device="cpu", overlays=3)
    params["precision"]["dtype"] = "fp32"
    params["tracking"]["enabled"] = False
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        params[section][name] = value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert split_stage.main(["--params", str(path)]) == 0
    assert model_stage.main(["--params", str(path)]) == 0
    (root / "outputs/train").mkdir(parents=True)
    shutil.copy(root / "outputs/model/init.safetensors", root / "outputs/train/best.safetensors")
    (root / "outputs/train/run.json").write_text(json.dumps({"run_id": None, "tracking_uri": None}))
    return path


@pytest.fixture(scope="module")
def segmentation_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("seg"), "segmentation")


@pytest.fixture(scope="module")
def classification_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("cls"), "classification")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_segmentation_end_to_end(segmentation_workspace: Path):
    params = segmentation_workspace
    assert evaluate_stage.main(["--params", str(params)]) == 0
    out = params.parent / "outputs/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((params.parent / "outputs/split/manifest.json").read_text())
    n_test = len(manifest["splits"]["test"])
    assert metrics["images"] == n_test > 0
    assert metrics["class_names"] == ["background", "foreground"]
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.sum().item() == n_test * SIZE * SIZE  # every test pixel counted once
    expected = segmentation_metrics(matrix, ["background", "foreground"])
    for key in ("dice", "iou", "pixel_accuracy", "dice/background", "dice/foreground", "iou/foreground"):
        assert metrics[key] == pytest.approx(expected[key]) and 0.0 <= metrics[key] <= 1.0
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
    params = classification_workspace
    assert evaluate_stage.main(["--params", str(params)]) == 0
    out = params.parent / "outputs/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((params.parent / "outputs/split/manifest.json").read_text())
    test = manifest["splits"]["test"]
    names = manifest["class_names"]
    rows = read_csv(out / "confusion.csv")
    assert [r["image"] for r in rows] == [e["image"] for e in test]  # one row per test image
    assert [r["actual"] for r in rows] == [names[e["label"]] for e in test]
    matrix = metrics["confusion_matrix"]
    for i, actual in enumerate(names):
        for j, predicted in enumerate(names):
            assert matrix[i][j] == sum(1 for r in rows if (r["actual"], r["predicted"]) == (actual, predicted))
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    for name in names:
        for kind in ("precision", "recall", "f1"):
            assert 0.0 <= metrics[f"{kind}/{name}"] <= 1.0
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["test_loss"] > 0
    with Image.open(out / "overlays.png") as overlays:  # 3 tiles in one row
        assert overlays.size == (3 * (160 + 12) + 6, 160 + 2 * 16 + 12 + 6)
    with Image.open(out / "confusion.png") as confusion:
        assert confusion.format == "PNG"


def test_missing_weights_is_a_clear_error(segmentation_workspace: Path, tmp_path: Path, capsys):
    workspace = tmp_path / "ws"
    shutil.copytree(segmentation_workspace.parent, workspace)
    (workspace / "outputs/train/best.safetensors").unlink()
    shutil.rmtree(workspace / "outputs/evaluate", ignore_errors=True)
    assert evaluate_stage.main(["--params", str(workspace / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "best.safetensors not found; run the train stage first" in err
    assert not (workspace / "outputs/evaluate").exists()


def test_unreachable_tracking_server_fails_fast_before_evaluating(segmentation_workspace: Path,
                                                                  tmp_path: Path, capsys):
    workspace = tmp_path / "ws"
    shutil.copytree(segmentation_workspace.parent, workspace)
    shutil.rmtree(workspace / "outputs/evaluate", ignore_errors=True)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["tracking"].update(enabled=True, uri=f"http://127.0.0.1:{port}")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    (workspace / "outputs/train/run.json").write_text(json.dumps({"run_id": "0123abcd", "tracking_uri": None}))
    started = time.perf_counter()
    assert evaluate_stage.main(["--params", str(workspace / "params.yaml")]) == 2
    assert time.perf_counter() - started < 10
    assert "not reachable" in capsys.readouterr().err
    assert not (workspace / "outputs/evaluate").exists()


def test_test_metrics_and_plots_go_into_trains_mlflow_run(segmentation_workspace: Path, tmp_path: Path,
                                                           mlflow_server, monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    from pipeline.tracking import run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "ws"
    shutil.copytree(segmentation_workspace.parent, workspace)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["tracking"].update(enabled=True, uri=mlflow_server.uri, experiment="evaluate-test")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    with tracking.start_run(params["tracking"], repo_root=workspace, run_name="train") as train_run:
        train_run.log_metrics({"val_dice": 0.5}, step=1)  # what train leaves behind
    (workspace / "outputs/train/run.json").write_text(json.dumps({"run_id": train_run.run_id,
                                                                   "tracking_uri": train_run.uri}))

    assert evaluate_stage.main(["--params", str(workspace / "params.yaml")]) == 0
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(train_run.run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    metrics = json.loads((workspace / "outputs/evaluate/metrics.json").read_text())
    assert run.data.metrics["test_dice"] == pytest.approx(metrics["dice"])
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert run.data.metrics["test_dice/foreground"] == pytest.approx(metrics["dice/foreground"])
    assert run.data.metrics["val_dice"] == 0.5
    assert run.data.params["evaluate.overlays"] == "3"
    assert run.info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert logged == {"metrics.json", "confusion.csv", "confusion.png", "overlays.png"}


def test_a_failure_midway_leaves_the_previous_outputs_whole(segmentation_workspace: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    from pipeline.config.errors import PipelineError
    from pipeline import plots

    workspace = tmp_path / "ws"
    shutil.copytree(segmentation_workspace.parent, workspace)
    old = workspace / "outputs/evaluate"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"dice": 0.25}\n')

    def broken(*args: object, **kwargs: object) -> None:
        raise PipelineError("drawing failed")

    monkeypatch.setattr(plots, "draw_segmentation_overlays", broken)
    assert evaluate_stage.main(["--params", str(workspace / "params.yaml")]) == 2
    assert sorted(p.name for p in old.iterdir()) == ["metrics.json"]  # no new csv/png beside it
    assert (old / "metrics.json").read_text() == '{"dice": 0.25}\n'
    assert not [p for p in old.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
