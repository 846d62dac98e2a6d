"""The model stage on a tiny workspace: deterministic, reloadable initial weights and their summary,
fine-tuning from the shipped source weights, and exit 2 with a message on every bad input."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from pipeline.hashing import file_sha256
from pipeline.models.file import load_model
from stages import model as model_stage
from tests.conftest import make_workspace, write_params
from tests.models.test_weights import SHIPPED


def test_stage_end_to_end_is_deterministic_and_reloadable(tmp_path, capsys):
    path = make_workspace(tmp_path, stages=("split",), **{"model.freeze": ["encoder.0.*"]})
    assert model_stage.main(["--params", str(path)]) == 0
    init, summary_file = tmp_path / "outputs/model/init.safetensors", tmp_path / "outputs/model/summary.json"
    first = init.read_bytes()
    summary = json.loads(summary_file.read_text())
    assert summary["architecture"] == "unet/classic" and summary["num_outputs"] == 1
    assert summary["parameters"]["frozen"] == sum(
        p.numel() for n, p in load_model(init)[0].named_parameters() if n.startswith("encoder.0.")
    )
    assert summary["init_sha256"] == file_sha256(init) and summary["weights"] is None
    assert model_stage.main(["--params", str(path)]) == 0
    assert init.read_bytes() == first  # same seed, same bytes
    model, info = load_model(init)
    assert model(torch.randn(1, 3, 24, 24)).shape == (1, 1, 24, 24) and info.task == "segmentation"
    assert sorted(load_file(str(init))) == sorted(model.state_dict())


def test_stage_fine_tunes_from_the_shipped_source_weights(tmp_path, capsys):
    """The default pipeline's four steps: the shipped source model (3 classes) loses its head, a new
    1-channel head is built, and everything else is copied."""
    path = make_workspace(
        tmp_path,
        stages=("split",),
        **{"model.pretrained": str(SHIPPED), "model.unet": {"base_channels": 16, "depth": 3, "upsampling": "bilinear"}},
    )
    assert model_stage.main(["--params", str(path)]) == 0
    summary = json.loads((tmp_path / "outputs/model/summary.json").read_text())
    weights = summary["weights"]
    assert weights["head_replaced"] and sorted(d.split(":")[0] for d in weights["dropped"]) == [
        "head.bias",
        "head.weight",
    ]
    assert weights["missing"] == 2 and weights["sha256"] == file_sha256(SHIPPED)
    source = load_file(str(SHIPPED))
    model, _ = load_model(tmp_path / "outputs/model/init.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items() if not k.startswith("head."))
    assert "dropped 2 tensor(s) that do not fit (the source's head; a new one is trained)" in capsys.readouterr().out


def test_stage_errors_exit_2_with_a_message(tmp_path, capsys):
    path = make_workspace(tmp_path, stages=("split",))
    manifest = tmp_path / "outputs/split/manifest.json"
    two_classes = manifest.read_text()
    manifest.unlink()
    assert model_stage.main(["--params", str(path)]) == 2
    assert "run the split stage first" in capsys.readouterr().err
    # the model stage reads the task and the class count only: a manifest of four classes suffices
    manifest.write_text(json.dumps({**json.loads(two_classes), "num_classes": 4, "class_names": ["a", "b", "c", "d"]}))
    write_params(path, path, **{"model.num_classes": 2})
    assert model_stage.main(["--params", str(path)]) == 2
    assert "model.num_classes: 2 is fewer than the 4 classes" in capsys.readouterr().err
    manifest.write_text(two_classes)
    write_params(path, path, **{"model.num_classes": None, "model.freeze": ["encoders.*"]})
    assert model_stage.main(["--params", str(path)]) == 2
    assert "model.freeze: pattern 'encoders.*' matches no parameter" in capsys.readouterr().err
    assert not (tmp_path / "outputs/model/init.safetensors").exists()
