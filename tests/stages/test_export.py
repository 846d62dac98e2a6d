"""The export stage on a tiny workspace: a verified ONNX file of the trained weights that onnxruntime
runs, with the weights' recipe in it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.inference.predictor import Predictor
from pipeline.models.file import META_KEY, read_recipe
from stages import export as export_stage
from tests.conftest import make_workspace


@pytest.mark.slow
def test_export_stage_writes_an_onnx_file_that_onnxruntime_runs(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=("split", "model"))
    ws = params.parent
    best = ws / "outputs/train/best.safetensors"
    best.parent.mkdir(parents=True)
    shutil.copy(ws / "outputs/model/init.safetensors", best)  # the initial weights stand in for trained ones
    assert export_stage.main(["--params", str(params)]) == 0
    assert "export: " in capsys.readouterr().out

    path = ws / "outputs/export/model.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map[META_KEY]) == read_recipe(best)
    batch = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    logits = session.run(None, {"images": batch.numpy()})[0]
    assert logits.shape == (3, 1, 32, 32)
    assert np.abs(logits - Predictor.from_file(best).logits(batch).numpy()).max() <= 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def test_export_stage_without_trained_weights_says_which_stage_to_run(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=("split",))
    assert export_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "outputs/train/best.safetensors not found; run the train stage first" in err and "Traceback" not in err
