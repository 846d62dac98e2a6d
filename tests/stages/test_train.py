"""The train stage on tiny generated workspaces built by the real split and model stages: it learns,
resumes after a real kill to the same weights, stops on NaN naming the step, runs bf16 on CPU, stops
early, and records the run in a real MLflow store."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.models.file import load_model
from pipeline.training import loop
from stages import train as train_stage
from tests.conftest import REPO, make_workspace, train_history, train_workspace, write_params


def nan_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user loss that is NaN from the first step (for the NaN-stop test)."""
    return logits.float().mean() * float("nan")


TRAINING_CALLS: list[int] = []


def nan_from_second_step(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Finite on the first training batch, NaN from the second; counts the training batches it sees
    (validate's 4 px stand-in batch is not one)."""
    if target.shape[-1] > 4:
        TRAINING_CALLS.append(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    return loss * float("nan") if len(TRAINING_CALLS) >= 2 else loss


@pytest.mark.slow
def test_short_run_learns_and_writes_outputs(tmp_path, shapes_dataset):
    # Fine-tunes the shipped source-task U-Net (as the default pipeline does): from scratch, a few
    # dozen steps on 32 px images are too few for a reliable gain.
    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{
            "train.epochs": 4,
            "model.pretrained": str(REPO / "weights/unet_classic_shapes_boundary.safetensors"),
            "model.unet.base_channels": 16,
            "model.unet.depth": 3,
            "optimizer.lr": 0.003,
        },
    )
    assert train_stage.main(["--params", str(params)]) == 0
    rows = train_history(params)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_dice"] for r in rows[1:]) > rows[0]["val_dice"]
    out = tmp_path / "outputs/train"
    metrics = yaml.safe_load((out / "metrics.json").read_text())
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert metrics == {"best_val_dice": max(r["val_dice"] for r in rows)}  # the score; the record apart
    assert summary["epochs_run"] == 4 and summary["last_epoch"] == rows[-1]
    assert rows[summary["best_epoch"] - 1]["val_dice"] == metrics["best_val_dice"]
    _model, info = load_model(out / "best.safetensors")
    assert info.num_outputs == 1
    assert yaml.safe_load((out / "run.json").read_text()) == {"run_id": None, "tracking_uri": None}


def _weights(ws: Path, part: str = "model") -> dict[str, torch.Tensor]:
    """The checkpoint's model weights, or (``ema``) its moving average's."""
    state = torch.load(ws.parent / "outputs/train/checkpoint/last.pt", weights_only=False)
    return state["ema"]["module"] if part == "ema" else state["model"]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "ema"), [(0, False), (2, True)])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, shapes_dataset, workers, ema):
    """Also with DataLoader workers that persist across epochs: each sample is seeded from (epoch seed,
    index) in whichever worker loads it, so the resumed epochs draw what the uninterrupted run drew.
    With train.ema the checkpoint carries the average: the resumed run ends with the same one."""
    overrides = {"train.epochs": 4, "train.deterministic": True, "train.workers": workers}
    if ema:
        overrides["train.ema"] = {"enabled": True, "decay": 0.9, "warmup": True, "every": 1, "keep": "auto"}
    whole = train_workspace(tmp_path / "whole", shapes_dataset, **overrides)
    assert train_stage.main(["--params", str(whole)]) == 0

    cut = train_workspace(tmp_path / "cut", shapes_dataset, **overrides)
    ckpt = cut.parent / "outputs/train/checkpoint/last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train", "--params", str(cut)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_done = torch.load(ckpt, weights_only=False)["epoch"]
    assert epoch_done < 3, "the run finished before it could be killed; the test proves nothing"

    assert train_stage.main(["--params", str(cut)]) == 0
    assert [r["epoch"] for r in train_history(cut)] == [1, 2, 3, 4]
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    if ema:
        a, b = _weights(whole, "ema"), _weights(cut, "ema")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed EMA differs"
    assert train_history(cut) == train_history(whole) or all(
        abs(x["val_dice"] - y["val_dice"]) < 1e-12 for x, y in zip(train_history(cut), train_history(whole))
    )


@pytest.mark.slow
def test_changed_params_start_fresh_instead_of_resuming(tmp_path, shapes_dataset, capsys):
    params = train_workspace(tmp_path, shapes_dataset, **{"train.epochs": 2})
    assert train_stage.main(["--params", str(params)]) == 0
    write_params(params, params, **{"optimizer.lr": 0.002})
    assert train_stage.main(["--params", str(params)]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert len(train_history(params)) == 2


def test_nan_loss_stops_with_epoch_and_step(tmp_path, shapes_dataset, capsys):
    params = train_workspace(tmp_path, shapes_dataset, **{"loss.name": "tests.stages.test_train:nan_loss"})
    assert train_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "NaN or Inf at epoch 1, step 1" in err and "Traceback" not in err
    assert not (tmp_path / "outputs/train/metrics.json").exists()


def test_nan_stops_within_a_quarter_of_an_epoch_without_a_wider_precision_hint_in_fp32(
    tmp_path, shapes_dataset, capsys
):
    """log_every_steps (20) is longer than the epoch: the loss is still read back four times an epoch."""
    TRAINING_CALLS.clear()
    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{"loss.name": "tests.stages.test_train:nan_from_second_step", "train.log_every_steps": 20},
    )
    assert train_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    batches = len(json.loads((tmp_path / "outputs/split/manifest.json").read_text())["splits"]["train"]) // 4
    assert batches >= 8 and "NaN or Inf at epoch 1, step 2" in err
    assert len(TRAINING_CALLS) <= math.ceil(batches / 4), (len(TRAINING_CALLS), batches)
    assert "precision.dtype" not in err and "train.grad_clip" in err  # fp32 has no wider precision to go to


@pytest.mark.slow
def test_bf16_on_cpu(tmp_path, shapes_dataset):
    params = train_workspace(tmp_path, shapes_dataset, **{"precision.dtype": "bf16", "train.epochs": 1})
    assert train_stage.main(["--params", str(params)]) == 0
    row = train_history(params)[0]
    assert all(v == v and abs(v) != float("inf") for v in row.values())


@pytest.mark.slow
def test_early_stopping(tmp_path, shapes_dataset, capsys):
    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{
            "train.epochs": 6,
            "train.early_stopping": {"monitor": "val_loss", "mode": "auto", "patience": 1, "min_delta": 100.0},
        },
    )
    assert train_stage.main(["--params", str(params)]) == 0
    assert len(train_history(params)) == 2  # nothing beats epoch 1 by 100: stop after one stale epoch
    assert "early stop after epoch 2" in capsys.readouterr().out
    summary = yaml.safe_load((tmp_path / "outputs/train/summary.json").read_text())
    assert summary["stopped_early"] is True and summary["best_epoch"] == 1


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_and_artifacts(tmp_path, shapes_dataset, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{
            "tracking.enabled": True,
            "tracking.uri": "sqlite:///mlflow.db",
            "tracking.experiment": "t",
            "tracking.system_metrics": 0.2,
            "train.epochs": 2,
        },
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train_stage.main(["--params", str(params)]) == 0
    run_json = yaml.safe_load((tmp_path / "outputs/train/run.json").read_text())
    # run.json is committed to git: the store as written, relative to the repo, never this machine's path
    assert run_json["tracking_uri"] == "sqlite:///mlflow.db" and str(tmp_path) not in str(run_json)
    run_id = run_json["run_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "dice_bce" and run.data.params["train.epochs"] == "2"
    assert len(run.data.params) > 60
    assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == [1, 2]
    waits = client.get_metric_history(run_id, "data_wait")  # the share of each epoch spent waiting for data
    assert [m.step for m in waits] == [1, 2] and all(0.0 <= m.value <= 1.0 for m in waits)
    # MLflow's system metrics, sampled every 0.2 s while training ran (GPU ones only on a GPU machine)
    cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0.0 <= m.value <= 100.0 * os.cpu_count() for m in cpu)
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert run.data.tags["dataset_fingerprint"]
    assert run.data.tags["best_weights"] == "model"  # train.ema off: the model's weights are the best file
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "weights")}
    assert {"history.csv", "weights/best.safetensors"} <= names
    assert load_file(str(tmp_path / "outputs/train/best.safetensors"))


OUR_LINES = re.compile(r"(train|tracking|note): ")  # what the stage and the library modules print


@pytest.mark.slow  # a subprocess of its own: about a minute on 2 cores
def test_the_train_log_holds_only_our_lines(tmp_path):
    """The train stage as `dvc repro` runs it (its own process, output to a pipe), tracking into a
    SQLite store and logging the MLflow Model: every line it prints is the pipeline's. No MLflow
    warning (the pyfunc's "Add type hints"), no "Downloading artifacts" bars (logging the model loads
    it back), no INFO chatter from MLflow, alembic or timm, whatever MLFLOW_* the caller has set."""
    params = make_workspace(
        tmp_path,
        task="classification",  # timm's model, MLflow's pyfunc with class probabilities
        **{"tracking.enabled": True, "tracking.uri": "sqlite:///mlflow.db", "tracking.system_metrics": 0.5},
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PYTHONWARNINGS"))}
    result = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(params)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in re.split(r"[\r\n]", result.stdout + result.stderr) if line.strip()]
    assert any(line.startswith("train: best val_accuracy") for line in lines), lines
    assert [line for line in lines if not OUR_LINES.match(line)] == []
    assert json.loads((tmp_path / "outputs/train/run.json").read_text())["run_id"]
    assert list((tmp_path / "mlartifacts").rglob("MLmodel"))  # the MLflow Model was logged (and loaded back)


@pytest.mark.slow
def test_train_and_evaluate_share_one_run_on_a_tracking_server(tmp_path, shapes_dataset, mlflow_server, monkeypatch):
    """One pipeline run = one MLflow run on a real `mlflow server`: every param, per-epoch history,
    test metrics and the artifacts of both stages, queried back through MlflowClient."""
    from mlflow import MlflowClient

    from pipeline.config.params import flatten
    from pipeline.tracking.naming import sanitize_key
    from stages import evaluate as evaluate_stage

    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{
            "tracking.enabled": True,
            "tracking.uri": mlflow_server.uri,
            "tracking.experiment": "server-e2e",
            "train.epochs": 2,
        },
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train_stage.main(["--params", str(params)]) == 0
    assert evaluate_stage.main(["--params", str(params)]) == 0
    run_id = yaml.safe_load((tmp_path / "outputs/train/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    expected = {sanitize_key(k) for k in flatten(yaml.safe_load(params.read_text()))}
    assert expected <= set(run.data.params), sorted(expected - set(run.data.params))[:5]
    history_ = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history_] == [1, 2]
    assert 0.0 <= run.data.metrics["test_dice"] <= 1.0
    artifacts = {a.path for folder in (None, "weights") for a in client.list_artifacts(run_id, folder)}
    assert {"history.csv", "history.png", "params.resolved.yaml", "weights/best.safetensors"} <= artifacts
    assert "overlays.png" in artifacts, artifacts


class Terminal(io.StringIO):
    """A captured stdout that says it is a terminal, so the progress bars draw into it."""

    def isatty(self) -> bool:
        return True


def _bar_frames(text: str, desc: str) -> list[str]:
    """Every drawing of the bars named ``desc`` (tqdm redraws with \\r; cursor moves removed)."""
    frames = re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text))
    return [f for f in frames if f.startswith(f"{desc}:")]


@pytest.mark.parametrize(
    "batches, log_every, steps",
    [
        (8, 20, {2, 4, 6, 8}),
        (9, 20, {3, 5, 7, 9}),
        (11, 20, {3, 6, 9, 11}),
        (3, 20, {1, 2, 3}),
        (1, 20, {1}),
        (80, 20, {20, 40, 60, 80}),
        (90, 20, {20, 40, 60, 80, 90}),
        (79, 20, {20, 40, 60, 79}),
    ],
)
def test_loss_is_read_back_four_times_an_epoch_or_every_log_every_steps(batches, log_every, steps):
    """At each quarter of the epoch when log_every_steps comes fewer than four times (9 batches: 4
    reads, where every ceil(9 / 4) = 3 steps gave only 3), else every log_every_steps; and the last."""
    assert loop.readback_steps(batches, log_every) == steps


@pytest.mark.slow
def test_bars_show_the_running_loss_four_times_an_epoch_and_a_validation_bar(tmp_path, shapes_dataset, monkeypatch):
    """8 batches an epoch, log_every_steps 20: the epoch bar's running loss still changes four times
    (at the quarters: the only reads of the loss, so exactly four), and validation has a bar of its
    own over the validation batches in each epoch."""
    params = train_workspace(
        tmp_path,
        shapes_dataset,
        **{
            "split.fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
            "train.batch_size": 4,
            "train.epochs": 2,
            "train.log_every_steps": 20,
        },
    )
    splits = json.loads((tmp_path / "outputs/split/manifest.json").read_text())["splits"]
    val_batches = math.ceil(len(splits["val"]) / 4)
    assert len(splits["train"]) // 4 == 8
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert train_stage.main(["--params", str(params)]) == 0
    output = terminal.getvalue()
    for epoch in (1, 2):
        shown = [m.group(1) for f in _bar_frames(output, f"epoch {epoch}") if (m := re.search(r"loss=([0-9.]+)", f))]
        updates = [value for i, value in enumerate(shown) if i == 0 or value != shown[i - 1]]
        assert len(updates) == 4, (epoch, shown)
    validation = _bar_frames(output, "validate")  # drawn at least as it starts, in every epoch
    assert len({f for f in validation if re.search(rf"\b\d+/{val_batches} ", f)}) >= 1 and len(validation) >= 2
    assert any("epochs" in f for f in re.split(r"[\r\n]", output))


def test_train_threads_sizes_torch_threads(tmp_path, shapes_dataset):
    """The stage applies train.threads (here 1, below this machine's default) before training."""
    before = torch.get_num_threads()
    params = train_workspace(tmp_path, shapes_dataset, **{"train.threads": 1, "train.epochs": 1})
    try:
        torch.set_num_threads(2)
        assert train_stage.main(["--params", str(params)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
