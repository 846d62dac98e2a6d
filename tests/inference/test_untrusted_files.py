"""A model file is data, and predict and export never write over what they read.

Each case runs ``python -m pipeline`` in-process on a real model file (a tiny U-Net saved by the
pipeline, its recipe then edited) and asserts what the user sees: exit 2, one line naming the file or
option at fault, no traceback, and nothing written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.cli import main as cli
from pipeline.models.file import META_KEY, ModelInfo, load_model, save_model
from tests.models.test_networks import TINY_UNET, arch, build


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary segmentation model file as the model stage writes it (a 2-level classic U-Net, 32 px)."""
    config = arch("unet", "classic", task="segmentation", outputs=2, unet=TINY_UNET)
    config["num_outputs"] = 1
    model, info, _ = build(config)
    path = tmp_path_factory.mktemp("model") / "best.safetensors"
    save_model(path, model, info)
    return path


def _recipe(path: Path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()[META_KEY])


def _with_recipe(source: Path, target: Path, text: str, tensors: dict | None = None) -> Path:
    save_file(tensors if tensors is not None else load_file(str(source)), str(target), metadata={META_KEY: text})
    return target


def _edited(edit: Callable[[dict], object]) -> Callable[[dict], str]:
    def text(recipe: dict) -> str:
        edit(recipe)
        return json.dumps(recipe)

    return text


def _image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder / "a.png"


def _refused(capsys, argv: list[str], *expected: str) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# --- a model file never runs code ---------------------------------------------------------------------

PLANTED = "from pathlib import Path\nPath({marker!r}).write_text('ran')\ndef Net(**kwargs):\n    raise SystemExit(7)\n"


@pytest.mark.parametrize("name", ["evilmod:Net", "this:s", "os:system"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_file_that_names_code_is_refused_and_the_code_never_runs(
    model_file, tmp_path, monkeypatch, capsys, name, command
):
    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m pipeline` run here would import it
    planted = _with_recipe(
        model_file,
        tmp_path / "planted.safetensors",
        _edited(lambda r: r["arch"].update(name=name))(_recipe(model_file)),
    )
    argv = (
        ["predict", str(_image(tmp_path / "in")), "--out", str(tmp_path / "out")]
        if command == "predict"
        else ["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    _refused(
        capsys, [*argv, "--model", str(planted)], "planted.safetensors", f"names user code ('{name}')", "--trust-code"
    )
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
    assert "evilmod" not in __import__("sys").modules


def test_user_code_in_eval_augment_is_refused_too(model_file, tmp_path, capsys):
    planted = _with_recipe(
        model_file,
        tmp_path / "aug.safetensors",
        _edited(lambda r: r.update(eval_augment=[{"evilmod:Aug": {}}]))(_recipe(model_file)),
    )
    _refused(
        capsys,
        ["predict", str(_image(tmp_path / "in")), "--model", str(planted), "--out", str(tmp_path / "o")],
        "names user code ('evilmod:Aug')",
    )


def test_trust_code_loads_a_user_architecture_in_predict_and_the_pyfunc(tmp_path, capsys):
    from pipeline.inference.pyfunc_model import trusts_code

    config = arch("timm", "tests.user_models:tiny_classifier", outputs=3, size=16)
    model, info, _ = build(config)
    path = tmp_path / "user.safetensors"
    save_model(path, model, info)
    image = _image(tmp_path / "in")
    _refused(capsys, ["predict", str(image), "--model", str(path), "--out", str(tmp_path / "o")], "--trust-code")
    assert cli(["predict", str(image), "--model", str(path), "--out", str(tmp_path / "o"), "--trust-code"]) == 0
    rows = (tmp_path / "o/predictions.csv").read_text().splitlines()
    assert rows[0] == "path,predicted,probability,p_class_0,p_class_1,p_class_2" and len(rows) == 2
    assert trusts_code({"trust_code": True}) and not trusts_code({}) and not trusts_code({"trust_code": "yes"})


# --- malformed recipes: one line each -----------------------------------------------------------------

RECIPES: dict[str, tuple[Callable[[dict], str], str]] = {
    "bad-json": (lambda r: "{not json", "its recipe is not valid JSON"),
    "a-list": (lambda r: json.dumps([r]), "its recipe is a JSON list, not an object"),
    "no-arch": (_edited(lambda r: r.pop("arch")), "arch: missing (required)"),
    "version-two": (_edited(lambda r: r.update(version="two")), "recipe version 'two' is not a format version"),
    "version-newer": (_edited(lambda r: r.update(version=99)), "format 99, newer than this code reads"),
    "unknown-name": (_edited(lambda r: r["arch"].update(name="clasic")), "unknown U-Net encoder 'clasic'"),
    "unknown-source": (_edited(lambda r: r["arch"].update(source="keras")), "arch.source: 'keras' is not one of"),
    "threshold-high": (_edited(lambda r: r.update(threshold="high")), "threshold: expected number, got string"),
    "threshold-nan": (_edited(lambda r: r.update(threshold=math.nan)), "threshold: nan is not a finite number"),
    "image-size-negative": (
        _edited(lambda r: r["arch"].update(image_size=[0, -5])),
        "arch.image_size[0]: 0 is less than the minimum of 8",
    ),
    "image-size-huge": (
        _edited(lambda r: r["arch"].update(image_size=[100000, 100000])),
        "arch.image_size[0]: 100000 is greater than the maximum of 8192",
    ),
    "std-zero": (_edited(lambda r: r.update(std=[0, 0, 0])), "std[0]: 0 is less than or equal to the minimum of 0"),
    "outputs-contradict-task": (_edited(lambda r: r["arch"].update(num_outputs=5)), "arch.num_outputs is 5"),
    "unknown-augmenter": (_edited(lambda r: r.update(eval_augment=["Fliplrr"])), "did you mean 'Fliplr'"),
    "wider-net": (
        _edited(lambda r: r["arch"]["unet"].update(base_channels=8)),
        "its tensors do not fit the recipe's architecture",
    ),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_a_malformed_recipe_is_one_line_and_writes_nothing(model_file, tmp_path, capsys, case):
    make, expected = RECIPES[case]
    bad = _with_recipe(model_file, tmp_path / "bad.safetensors", make(_recipe(model_file)))
    _refused(
        capsys,
        ["predict", str(_image(tmp_path / "in")), "--model", str(bad), "--out", str(tmp_path / "out")],
        "bad.safetensors",
        expected,
    )
    assert not (tmp_path / "out").exists()


def test_tensors_of_the_wrong_shape_are_refused_before_they_are_loaded(model_file, tmp_path):
    tensors = load_file(str(model_file))
    name = next(n for n in tensors if n.endswith(".weight"))
    tensors[name] = tensors[name].flatten()[:3].clone()
    bad = _with_recipe(model_file, tmp_path / "shape.safetensors", json.dumps(_recipe(model_file)), tensors)
    with pytest.raises(Exception, match=rf"{name} is \[3\], the architecture's"):
        load_model(bad)


def test_the_recipe_round_trips_through_the_check(model_file):
    _model, info = load_model(model_file)
    assert isinstance(info, ModelInfo) and info.num_outputs == 1 and info.image_hw == (32, 32)


# --- options: one line each, before any work ----------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--threshold", "0", "--threshold 0.0: 0.0 is less than or equal to the minimum of 0"),
        ("--threshold", "1", "--threshold 1.0: 1.0 is greater than or equal to the maximum of 1"),
        ("--threshold", "nan", "--threshold nan: nan is not a finite number"),
        ("--device", "foo", "--device 'foo': 'foo' does not match"),
        ("--device", "mps", "--device 'mps'"),
        ("--device", "meta", "--device 'meta'"),
        ("--batch-size", "0", "--batch-size 0: 0 is less than the minimum of 1"),
        ("--batch-size", "-1", "--batch-size -1: -1 is less than the minimum of 1"),
    ],
)
def test_a_bad_predict_option_is_one_line(model_file, tmp_path, capsys, option, value, expected):
    _refused(
        capsys,
        [
            "predict",
            str(_image(tmp_path / "in")),
            "--model",
            str(model_file),
            "--out",
            str(tmp_path / "out"),
            option,
            value,
        ],
        expected,
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "out, expected",
    [
        ("a-file", "is not a folder"),
        ("/dev/null", "--out /dev/null: is not a folder"),
        ("/proc/yamltrain-out", "/proc is not writable"),
    ],
)
def test_an_out_that_cannot_hold_outputs_is_one_line(model_file, tmp_path, capsys, out, expected):
    if out == "a-file":
        out = str(tmp_path / "a-file")
        Path(out).write_text("keep")
    _refused(capsys, ["predict", str(_image(tmp_path / "in")), "--model", str(model_file), "--out", out], expected)
    if out.endswith("a-file"):
        assert Path(out).read_text() == "keep"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("-1", "--tolerance -1.0: -1.0 is less than or equal to the minimum"),
        ("nan", "--tolerance nan: nan is not a finite number"),
    ],
)
def test_a_bad_tolerance_is_refused_before_exporting(model_file, tmp_path, capsys, value, expected):
    _refused(
        capsys,
        [
            "export",
            "--format",
            "onnx",
            "--model",
            str(model_file),
            "--out",
            str(tmp_path / "m.onnx"),
            "--tolerance",
            value,
        ],
        expected,
    )
    assert list(tmp_path.iterdir()) == []


# --- never write over an input ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_refuses_to_write_over_the_model_it_reads(model_file, tmp_path, capsys, fmt):
    copy = tmp_path / "X.safetensors"
    copy.write_bytes(model_file.read_bytes())
    _refused(
        capsys,
        ["export", "--format", fmt, "--model", str(copy), "--out", str(copy)],
        f"writing {copy} would overwrite the input {copy} (the same file)",
    )
    (tmp_path / "link.pt").symlink_to(copy)
    _refused(
        capsys,
        ["export", "--format", fmt, "--model", str(copy), "--out", str(tmp_path / "link.pt")],
        "would overwrite the input",
    )
    assert copy.read_bytes() == model_file.read_bytes()


def test_predict_refuses_to_write_masks_over_the_images_it_reads(model_file, tmp_path, capsys):
    ds = tmp_path / "ds"
    _image(ds / "masks")
    before = (ds / "masks/a.png").read_bytes()
    _refused(
        capsys,
        ["predict", str(ds / "masks"), "--model", str(model_file), "--out", str(ds)],
        f"writing {ds / 'masks'} would overwrite the input {ds / 'masks'}",
    )
    _refused(
        capsys, ["predict", str(ds), "--model", str(model_file), "--out", str(ds / "pred")], "it lies inside that input"
    )
    _refused(
        capsys,
        ["predict", str(ds / "masks/a.png"), "--model", str(model_file), "--out", str(ds)],
        "that input lies inside it",
    )
    assert (ds / "masks/a.png").read_bytes() == before and sorted(p.name for p in ds.rglob("*")) == ["a.png", "masks"]


def test_a_broken_link_among_the_inputs_is_reported(model_file, tmp_path, capsys):
    folder = tmp_path / "in"
    _image(folder)
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert cli(["predict", str(folder), "--model", str(model_file), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"could not read {folder / 'gone.png'}: a broken link" in err and (tmp_path / "out/masks/a.png").is_file()


def test_an_unknown_run_creates_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _refused(
        capsys,
        ["predict", str(_image(tmp_path / "in")), "--model", "runs:/" + "0" * 32],
        "no tracking store at",
        "MLFLOW_TRACKING_URI",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_the_pyfunc_takes_pixels_without_silent_changes():
    from mlflow.exceptions import MlflowException

    from pipeline.inference.pyfunc_model import pixels

    whole = np.array([[[[0.0, 128.0, 255.0]]]])
    assert pixels(whole).dtype == np.uint8 and pixels(whole).tolist() == [[[[0, 128, 255]]]]
    for bad, expected in (
        (whole / 255, "whole numbers 0..255; found fractions"),
        (whole + 45, "found 45.0..300.0"),
        (np.array([[[[-1, 2, 3]]]]), "found -1..3"),
        (np.array([["a", "b", "c"]]), "<U1"),
    ):
        with pytest.raises(MlflowException, match=expected) as refused:
            pixels(bad)
        assert len(refused.value.message) < 200
