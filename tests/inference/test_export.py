"""``python -m pipeline export``: ONNX and TorchScript files that reproduce PyTorch (the predictor's
logits) within tolerance at other batch and image sizes than they were exported with, carry the
model file's recipe, and are refused (leaving no file) when they do not match."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.cli import main as cli
from pipeline.config.errors import PipelineError
from pipeline.config.schema import fill_defaults
from pipeline.inference import export as exporting
from pipeline.inference.export import export_model, read_metadata, second_size, sidecar_path
from pipeline.inference.predictor import Predictor
from pipeline.models.file import META_KEY, ModelInfo, save_model
from pipeline.models.initial import initial_model
from pipeline.models.networks import architecture

ARCHS = {  # 32 px, tiny: a fully convolutional U-Net and a timm classifier with global pooling
    "unet": (
        {
            "source": "unet",
            "name": "classic",
            "in_chans": 3,
            "unet": {"base_channels": 4, "depth": 2, "upsampling": "bilinear"},
        },
        "segmentation",
        2,
    ),
    "unet_transposed": (
        {
            "source": "unet",
            "name": "classic",
            "in_chans": 3,
            "unet": {"base_channels": 4, "depth": 2, "upsampling": "transposed"},
        },
        "segmentation",
        3,
    ),
    "timm": ({"source": "timm", "name": "test_resnet", "in_chans": 3, "unet": None}, "classification", 3),
    "vit": ({"source": "timm", "name": "test_vit", "in_chans": 3, "unet": None}, "classification", 3),
}
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = exporting.DEFAULT_TOLERANCE
# torch.jit.load is deprecated in favour of torch.export, yet it is how TorchScript files are loaded
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def _model_file(root: Path, kind: str) -> tuple[Path, ModelInfo]:
    declared, task, classes = ARCHS[kind]
    config = architecture(declared, task=task, num_classes=classes, image_size=[32, 32])
    net, info, _ = initial_model(config, pretrained=False, freeze="none", seed=0, root=root)
    info.class_names = [f"shape{i}" for i in range(classes)]
    info.mean, info.std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not the defaults: the graph must use the recipe's
    save_model(root / f"{kind}.safetensors", net, info)
    return root / f"{kind}.safetensors", info


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelInfo]]:
    root = tmp_path_factory.mktemp("models")
    return {kind: _model_file(root, kind) for kind in ARCHS}


@pytest.fixture(scope="module")
def exported(model_files, tmp_path_factory) -> Callable[[str, str], tuple[Path, exporting.ExportReport]]:
    """(kind, format) -> the exported file and its report, each exported once per module."""
    root, done = tmp_path_factory.mktemp("exported"), {}

    def get(kind: str, fmt: str) -> tuple[Path, exporting.ExportReport]:
        if (kind, fmt) not in done:
            out = root / f"{kind}{SUFFIX[fmt]}"
            done[kind, fmt] = out, export_model(model_files[kind][0], fmt, out)
        return done[kind, fmt]

    return get


def _runner(path: Path, fmt: str) -> Callable[[torch.Tensor], np.ndarray]:
    """The exported file as a deployment loads it: onnxruntime on CPU, or torch.jit.load."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch.numpy()})[0]
    module = torch.jit.load(str(path))
    return lambda batch: module(batch).detach().numpy()


def _images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=generator, dtype=torch.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", ["unet", "timm"])
def test_export_agrees_with_pytorch_at_other_batch_and_image_sizes(kind, fmt, model_files, exported):
    path, report = exported(kind, fmt)
    assert report.dynamic_size and report.note is None
    assert [shape for shape, _ in report.checks] == [(2, 3, 32, 32), (1, 3, *second_size((32, 32)))]
    assert 0 <= report.max_abs_diff <= TOLERANCE
    run, predictor = _runner(path, fmt), Predictor.from_file(model_files[kind][0], device="cpu")
    for n, height, width in [(3, 32, 32), (5, 48, 40), (1, 37, 53)]:  # none of them the exported batch of 2
        batch = _images(n, height, width, seed=height)
        got, want = run(batch), predictor.logits(batch).numpy()
        assert got.dtype == np.float32
        assert got.shape == want.shape == ((n, 1, height, width) if kind == "unet" else (n, 3))
        assert np.abs(got - want).max() <= TOLERANCE
        assert np.abs(want).max() > 100 * TOLERANCE  # the logits are not all near zero: the check means something


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", ["unet", "timm"])
def test_the_recipe_travels_with_the_file(kind, fmt, model_files, exported):
    path, _ = exported(kind, fmt)
    info = model_files[kind][1]
    if fmt == "onnx":  # read back as a deployment reads it, with onnxruntime
        stored = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        props = stored.custom_metadata_map
    else:
        sidecar = json.loads(sidecar_path(path).read_text())
        props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in sidecar.items()}
    assert json.loads(props[META_KEY]) == info.recipe()
    assert props["task"] == info.task and json.loads(props["class_names"]) == info.class_names
    assert json.loads(props["image_size"]) == [32, 32]
    assert json.loads(props["input_shape"]) == ["batch", 3, "height", "width"]
    assert props["input"].startswith("images: uint8 RGB [batch, 3, height, width]")
    metadata = read_metadata(path)
    assert metadata[META_KEY] == info.recipe() and metadata["format"] == fmt and metadata["threshold"] == 0.5


@pytest.mark.slow
def test_onnx_graph_has_named_dynamic_dims(exported):
    path, _ = exported("unet", "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.type, images.shape) == ("images", "tensor(uint8)", ["batch", 3, "height", "width"])
    assert (logits.name, logits.type, logits.shape) == ("logits", "tensor(float)", ["batch", 1, "height", "width"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "fmt", "why"),
    [
        ("unet_transposed", "onnx", "the exported model does not run on [1, 3, 41, 39]"),
        ("unet_transposed", "torchscript", "the exported model does not run on [1, 3, 41, 39]"),
        ("vit", "torchscript", "the model does not take [1, 3, 41, 39]"),
    ],
)
def test_a_model_that_needs_its_size_is_exported_with_fixed_height_and_width(kind, fmt, why, model_files, tmp_path):
    """A transposed-convolution U-Net cannot take odd sizes (its graph up-samples 20 to 40, not 41) and a
    ViT takes multiples of its patch only: the dynamic graph is not kept, the size is fixed, the file says so."""
    weights, _ = model_files[kind]
    out = tmp_path / f"model{SUFFIX[fmt]}"
    report = export_model(weights, fmt, out)
    assert not report.dynamic_size and report.note.startswith(f"height and width fixed at 32x32 ({why}: ")
    assert [shape for shape, _ in report.checks] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert report.max_abs_diff <= TOLERANCE
    assert read_metadata(out)["input_shape"] == ["batch", 3, 32, 32]
    batch = _images(4, 32, 32, seed=4)
    assert np.abs(_runner(out, fmt)(batch) - Predictor.from_file(weights).logits(batch).numpy()).max() <= TOLERANCE
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_beyond_the_tolerance_is_refused_and_leaves_no_file(fmt, model_files, tmp_path, monkeypatch):
    logits = Predictor.logits
    monkeypatch.setattr(Predictor, "logits", lambda self, batch: logits(self, batch) + 0.01)  # PyTorch moves
    out = tmp_path / "out" / f"model{SUFFIX[fmt]}"
    refused = r"differ from PyTorch's by 0\.01 .*above the tolerance 0\.0001; nothing was written"
    with pytest.raises(PipelineError, match=refused):
        export_model(model_files["unet"][0], fmt, out)
    assert list(out.parent.iterdir()) == []  # neither the file, its sidecar, nor a temporary file


@pytest.mark.slow
def test_cli_exports_and_prints_the_difference(model_files, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert cli(["export", "--format", "torchscript", "--model", str(model_files["timm"][0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"export: {out} (torchscript): largest absolute logit difference from PyTorch ")
    assert "(tolerance 0.0001)" in printed and out.is_file() and sidecar_path(out).is_file()


def test_cli_error_for_a_missing_model_file_is_one_line(tmp_path, capsys):
    missing, out = tmp_path / "nope.safetensors", tmp_path / "model.onnx"
    assert cli(["export", "--format", "onnx", "--model", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "no such model file" in err and "Traceback" not in err
    assert not out.exists()


def test_an_unsupported_opset_is_refused_before_exporting(model_files, tmp_path):
    with pytest.raises(PipelineError, match="--opset 17: 17 is less than the minimum of 18"):
        export_model(model_files["unet"][0], "onnx", tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()


def test_defaults_are_the_export_sections():
    section = fill_defaults({"export": {}})["export"]
    assert (section["tolerance"], section["opset"], section["dynamic_size"]) == (
        exporting.DEFAULT_TOLERANCE,
        exporting.DEFAULT_OPSET,
        True,
    )
