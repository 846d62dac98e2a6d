"""predict's ``--threshold`` for a multilabel model: one number or per class (evaluate.threshold's mapping,
as ``NAME=VALUE,...``), classes not named at 0.5; names checked against the model's classes with a
did-you-mean; a mapping refused for a model that is not multilabel; a malformed value refused by the parser."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as cli
from pipeline.models.file import save_model
from tests.models.test_networks import TINY_UNET, arch, build

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A multilabel model file (a tiny timm net, untrained) and eight 32 px images."""
    root = tmp_path_factory.mktemp("multilabel")
    model, info, _ = build(arch("timm", "test_resnet", task="multilabel", outputs=3))
    info.class_names = CLASSES
    save_model(root / "best.safetensors", model, info)
    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)).save(root / f"im{i}.png")
        images.append(str(root / f"im{i}.png"))
    return root / "best.safetensors", images


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv") as fh:
        return list(csv.DictReader(fh))


def test_per_class_thresholds_decide_each_label(multilabel, tmp_path):
    model, images = multilabel
    assert cli(["predict", *images, "--model", str(model), "--out", str(tmp_path / "a")]) == 0
    probabilities = [{n: float(row[f"p_{n}"]) for n in CLASSES} for row in _rows(tmp_path / "a")]
    # per class, a threshold between this batch's probabilities: some images above it, some below
    limits = {n: float(np.median([p[n] for p in probabilities])) for n in ("circle", "triangle")}
    given = ",".join(f"{n}={v}" for n, v in limits.items())
    assert cli(["predict", *images, "--model", str(model), "--out", str(tmp_path / "b"), "--threshold", given]) == 0
    rows = _rows(tmp_path / "b")
    chosen = [set(filter(None, row["labels"].split(";"))) for row in rows]
    expected = [{n for n in CLASSES if p[n] > limits.get(n, 0.5)} for p in probabilities]
    assert chosen == expected
    assert any("circle" in c for c in chosen) and not all("circle" in c for c in chosen)  # the threshold decided


def test_a_class_the_model_lacks_is_refused_with_a_suggestion(multilabel, tmp_path, capsys):
    model, images = multilabel
    code = cli(["predict", *images, "--model", str(model), "--out", str(tmp_path / "c"), "--threshold", "cirlce=0.3"])
    err = capsys.readouterr().err
    assert code != 0 and "--threshold.cirlce" in err and "did you mean 'circle'" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_a_mapping_is_for_multilabel_models_and_values_must_parse(tmp_path, capsys):
    model, info, _ = build(
        {**arch("unet", "classic", task="segmentation", outputs=2, unet=TINY_UNET), "num_outputs": 1}
    )
    save_model(tmp_path / "seg.safetensors", model, info)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    args = [
        "predict",
        str(tmp_path / "x.png"),
        "--model",
        str(tmp_path / "seg.safetensors"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli([*args, "--threshold", "foreground=0.3"]) != 0
    assert "a per-class mapping is for multilabel data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([*args, "--threshold", "circle=high"])
    assert "'circle=high': expected NAME=VALUE with a number" in capsys.readouterr().err
    assert cli([*args, "--threshold", "1.5"]) != 0  # the schema's bounds, as for evaluate.threshold
    assert "--threshold" in capsys.readouterr().err
