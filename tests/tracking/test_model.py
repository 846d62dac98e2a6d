"""The trained model as an MLflow Model: logged by the train stage (from code, not a pickled module),
registered, loaded with mlflow.pyfunc in a fresh process outside the repository, served by a real
`mlflow models serve` on 127.0.0.1, and fetched by `python -m pipeline predict --model runs:/ID`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.inference.predictor import Predictor
from stages import train as train_stage
from tests.conftest import make_workspace

REGISTERED = "shapes-unet"

pytestmark = pytest.mark.slow  # a trained, tracked model; a fresh process and a model server read it


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A workspace trained for one epoch with tracking on a fresh SQLite store: (root, store URI, run id)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = make_workspace(
            root,
            **{
                "train.epochs": 1,
                "tracking.enabled": True,
                "tracking.uri": uri,
                "tracking.experiment": "models",
                "tracking.register_model": REGISTERED,
            },
        )
        assert train_stage.main(["--params", str(params)]) == 0
        assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model leaves the process's store alone
    run_id = yaml.safe_load((root / "outputs/train/run.json").read_text())["run_id"]
    return root, uri, run_id


def _images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (2, 40, 24, 3), dtype=np.uint8)


def _expected(root: Path, images: np.ndarray) -> np.ndarray:
    """What predict computes in this process for the same images (masks at the input size)."""
    from PIL import Image

    from pipeline.inference.predictor import mask_at_size

    predictor = Predictor.from_file(root / "outputs/train/best.safetensors", device="cpu")
    classes = predictor.classes(predictor.logits(torch.stack([predictor.prepare(Image.fromarray(i)) for i in images])))
    return np.stack([mask_at_size(c, (images.shape[2], images.shape[1])) for c in classes])


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH="")  # the package comes from the model's code paths
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the server runs uvicorn
    return env


def test_the_run_has_a_registered_mlflow_model(trained):
    from mlflow import MlflowClient

    _root, uri, run_id = trained
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert [v.run_id for v in versions] == [run_id]
    models = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    assert [m.name for m in models if m.source_run_id == run_id] == ["model"]  # the run's Models column


def test_pyfunc_loads_in_a_fresh_process_and_predicts_like_predict(trained, tmp_path):
    root, uri, run_id = trained
    images = _images()
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, numpy as np, mlflow\n"
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/model')\n"
        "out = model.predict(np.load(sys.argv[1]))\n"
        "np.save(sys.argv[2], out)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        cwd=tmp_path,
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (2, 40, 24) and out.dtype == np.uint8
    assert np.array_equal(out, _expected(root, images))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_model_server_answers(trained, tmp_path):
    root, uri, run_id = trained
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed in the finally below, after the server)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"runs:/{run_id}/model",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=_env(uri),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"model server did not come up: {(tmp_path / 'serve.log').read_text()[-3000:]}")
        images = _images()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert np.array_equal(np.asarray(answer["predictions"], dtype=np.uint8), _expected(root, images))
        # A value no uint8 pixel holds is a 400 with a short message, not the whole array quoted back.
        wrong = images.astype(np.int64)
        wrong[0, 0, 0, 0] = 300
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": wrong.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        body = refused.value.read().decode()
        assert refused.value.code == 400 and "300 out of bounds for uint8" in body and len(body) < 1000, body
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        log.close()


def test_predict_fetches_the_weights_of_a_run(trained, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from pipeline.cli import main as cli

    root, uri, run_id = trained
    Image.fromarray(_images()[0]).save(tmp_path / "one.png")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli(["predict", str(tmp_path / "one.png"), "--model", f"runs:/{run_id}", "--out", str(tmp_path / "p")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p/masks/one.png")), _expected(root, _images()[:1])[0])
    assert cli(["predict", str(tmp_path / "one.png"), "--model", "runs:/" + "0" * 32]) == 2
    assert "cannot fetch weights/best.safetensors" in capsys.readouterr().err
