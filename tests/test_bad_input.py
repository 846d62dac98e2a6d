"""The bad-input catalogue: what a user can get wrong, each refused the way the project promises.

Every case runs a stage as ``dvc repro`` would (its ``main``, in-process) in a tiny workspace whose split
and model stages already ran, and asserts: exit status 2; a message that names the file and line of the
params key at fault (config), or the path at fault (data and run faults); no traceback; and nothing
written or half-written: every file of the workspace is byte-identical afterwards (outputs, and a
dvc.lock left there as DVC would). Config faults are refused before any work: by the validate stage
(``dvc repro`` runs it first; it reads every key), and also by the stage that runs alone: YAML and schema
faults by every stage (split here), a semantic check's fault by each stage that reads its key (the first
after validate here).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config.check_spec import key_parts
from tests.conftest import REPO, make_workspace, write_params


@dataclass(frozen=True)
class Case:
    """One bad input: params edits (dotted ``overrides`` or text ``replace``), an optional ``plant``
    that damages a file of the workspace, the stage to run, and what its message must say."""

    id: str
    expect: str
    key: str | None = None  # config faults: the dotted key reported at file:line:col
    stage: str = "split"
    overrides: dict = field(default_factory=dict)
    replace: dict = field(default_factory=dict)
    plant: Callable[[Path], Path] | None = None  # returns the path the message must name


# --- config faults: refused at validate time, located ---------------------------------------------


def _first_reader(key: str) -> str:
    """The first stage of dvc.yaml after ``validate`` (which reads every key and refuses every case:
    :func:`test_the_validate_stage_refuses_every_config_fault`) that reads ``key`` (or a section
    around it): the stage that refuses it when run alone (``dvc repro -s``)."""
    parts = key_parts(key)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
    order = [stage["cmd"].split()[-1].removeprefix("stages.") for stage in stages]
    order.remove("validate")
    return next(
        stage
        for stage in order
        if any(parts[: len(key_parts(k))] == key_parts(k) for k in _reads(importlib.import_module(f"stages.{stage}")))
    )


def _reads(module: object) -> tuple[str, ...]:
    """Every key a stage reads: its PARAMS and those it reads only to record (RECORD_PARAMS)."""
    return (*module.PARAMS, *getattr(module, "RECORD_PARAMS", ()))


def _aug(spec: list) -> dict:
    return {"augment.train": spec}


CONFIG = [
    Case(
        "max-side-without-native-resolution",
        "applies to data.resize none only",
        "data.max_side",
        overrides={"data.max_side": 256},
    ),
    Case(
        "max-side-below-the-crop",
        "smaller than the training crop",
        "data.max_side",
        overrides={"data.resize": "none", "data.max_side": 16, "data.image_size": [32, 32]},
    ),
    Case(
        "scheduler-gamma-not-a-number",
        "StepLR when stepped",
        "scheduler.params.gamma",
        stage="train",
        overrides={"scheduler": {"name": "StepLR", "params": {"step_size": 2, "gamma": "abc"}}},
    ),
    Case(
        "scheduler-missing-argument",
        "missing required argument 'step_size'",
        "scheduler.params",
        stage="train",
        overrides={"scheduler": {"name": "StepLR", "params": {"gamma": 0.5}}},
    ),
    Case(
        "scheduler-unknown",
        "did you mean 'StepLR'",
        "scheduler.name",
        stage="train",
        overrides={"scheduler.name": "StepLRR"},
    ),
    Case(
        "scheduler-bad-factor",
        "Factor should be < 1.0",
        "scheduler.params.factor",
        stage="train",
        overrides={"scheduler": {"name": "ReduceLROnPlateau", "params": {"factor": 2.0}}},
    ),
    Case(
        "scheduler-plateau-per-step",
        "per epoch",
        "scheduler.interval",
        stage="train",
        overrides={"scheduler": {"name": "ReduceLROnPlateau", "interval": "step", "params": {}}},
    ),
    Case(
        "scheduler-warmup-both",
        "not both",
        "scheduler.warmup",
        stage="train",
        overrides={"scheduler.warmup": {"epochs": 1, "steps": 5, "start_factor": 0.1}},
    ),
    Case(
        "scheduler-warmup-too-long",
        "leave nothing of train.epochs",
        "scheduler.warmup.epochs",
        stage="train",
        overrides={"scheduler.warmup": {"epochs": 2, "steps": 0, "start_factor": 0.1}},
    ),
    Case(
        "scheduler-none-with-params",
        "takes no params",
        "scheduler.params",
        stage="train",
        overrides={"scheduler": {"name": "none", "params": {"gamma": 0.5}}},
    ),
    Case(
        "focal-alpha-not-a-number",
        "focal:",
        "loss.params.alpha",
        stage="train",
        overrides={"loss": {"name": "focal", "params": {"alpha": "high"}}},
    ),
    Case("loss-unknown", "did you mean 'dice'", "loss.name", stage="train", overrides={"loss.name": "dicee"}),
    Case(
        "loss-wrong-mode",
        "is for multi-class tasks",
        "loss.name",
        stage="train",
        overrides={"loss.name": "cross_entropy", "data.num_classes": 2},
    ),
    Case(
        "loss-unexpected-argument",
        "did you mean 'smooth'",
        "loss.params.smoth",
        stage="train",
        overrides={"loss": {"name": "dice", "params": {"smoth": 1.0}}},
    ),
    Case(
        "loss-sum-without-terms",
        "needs at least one term",
        "loss.terms",
        stage="train",
        overrides={"loss": {"name": "sum", "params": {}, "terms": []}},
    ),
    Case(
        "loss-user-code-missing",
        "has no attribute",
        "loss.name",
        stage="train",
        overrides={"loss.name": "tests.user_losses:Nope"},
    ),
    Case(
        "optimizer-unknown",
        "did you mean 'AdamW'",
        "optimizer.name",
        stage="train",
        overrides={"optimizer.name": "AdamWW"},
    ),
    Case(
        "optimizer-bad-betas",
        "Invalid beta parameter",
        "optimizer.params.betas",
        stage="train",
        overrides={"optimizer.params": {"betas": [2.0, 0.9]}},
    ),
    Case(
        "optimizer-betas-not-numbers",
        "AdamW:",
        "optimizer.params.betas",
        stage="train",
        overrides={"optimizer.params": {"betas": "abc"}},
    ),
    Case(
        "optimizer-unexpected-argument",
        "unexpected argument",
        "optimizer.params.momentun",
        stage="train",
        overrides={"optimizer.params": {"momentun": 0.9}},
    ),
    Case(
        "optimizer-lr-set-twice",
        "set by the pipeline",
        "optimizer.params.lr",
        stage="train",
        overrides={"optimizer.params": {"lr": 0.1}},
    ),
    Case("optimizer-lbfgs", "needs a closure", "optimizer.name", stage="train", overrides={"optimizer.name": "LBFGS"}),
    Case("optimizer-negative-lr", "less than or equal to the minimum", "optimizer.lr", overrides={"optimizer.lr": -1}),
    Case(
        "image-size-negative",
        "-1 is less than the minimum of 8",
        "data.image_size[1]",
        overrides={"data.image_size": [32, -1]},
    ),
    Case("task-typo", "did you mean 'segmentation'", "data.task", overrides={"data.task": "segmentaton"}),
    Case("unknown-key", "did you mean 'params'", "loss.parms", replace={"  params: {}": "  parms: {}"}),
    Case("data-root-missing", "does not exist", "data.root", overrides={"data.root": "no-such-folder"}),
    Case(
        "fractions-do-not-sum-to-one",
        "must sum to 1",
        "split.fractions",
        overrides={"split.fractions": {"train": 0.5, "val": 0.2, "test": 0.2}},
    ),
    Case("augmenter-unknown", "did you mean 'Fliplr'", "augment.train[0]", stage="augment", overrides=_aug(["Flipr"])),
    Case(
        "augmenter-bad-value",
        "Affine",
        "augment.train[0].Affine.rotate",
        stage="augment",
        overrides=_aug([{"Affine": {"rotate": "lots"}}]),
    ),
    Case(
        "augmenter-bad-mode",
        "fails on a test image",
        "augment.train[0].Affine",
        stage="augment",
        overrides=_aug([{"Affine": {"rotate": [-10, 10], "mode": "reflec"}}]),
    ),
    Case(
        "augmenter-unsafe-for-masks",
        "cannot handle segmentation masks",
        "augment.train[0].pillike.Affine",
        stage="augment",
        overrides=_aug([{"pillike.Affine": {"rotate": [-10, 10]}}]),
    ),
    Case(
        "model-unknown-encoder",
        "unknown U-Net encoder",
        "model.name",
        stage="model",
        overrides={"model.name": "resnet1888"},
    ),
    Case(
        "freeze-pattern-matches-nothing",
        "matches no parameter",
        "model.freeze",
        stage="model",
        overrides={"model.freeze": ["encoders.*"]},
    ),
    Case(
        "freeze-backbone-without-weights",
        "every layer starts random",
        "model.freeze",
        stage="model",
        overrides={"model.freeze": "backbone"},
    ),
    Case(
        "pretrained-file-missing",
        "does not exist",
        "model.pretrained",
        stage="model",
        overrides={"model.pretrained": "nowhere.pt"},
    ),
    Case(
        "pretrained-wrong-extension",
        "unsupported extension",
        "model.pretrained",
        stage="model",
        overrides={"model.pretrained": "w.onnx"},
    ),
    Case(
        "classifier-for-segmentation",
        "segmentation needs source: unet",
        "model.source",
        stage="model",
        overrides={"model.source": "timm", "model.name": "resnet10t"},
    ),
    Case(
        "fp16-on-cpu", "fp16 needs a CUDA GPU", "precision.dtype", stage="train", overrides={"precision.dtype": "fp16"}
    ),
    Case(
        "tracking-file-store",
        "file store",
        "tracking.uri",
        stage="train",
        overrides={"tracking.enabled": True, "tracking.uri": "./mlruns"},
    ),
    Case(
        "yaml-duplicate-key",
        "duplicate key",
        "loss.name",
        replace={"  name: dice_bce": "  name: dice_bce\n  name: dice"},
    ),
    Case("yaml-syntax-error", "", None, replace={"loss:\n": "loss: [\n"}),
    Case(
        "group-by-backtracks",
        "backtracks through exponentially many ways",
        "split.group_by",
        overrides={"split.group_by": "^((?:a+)+)$"},
    ),
    Case(
        "group-by-overlapping-alternatives",
        "repeats a part that can match the same text",
        "split.group_by",
        overrides={"split.group_by": "^((?:a|a)+)_"},
    ),
]


# --- data faults: refused by the split stage, naming the file ---------------------------------------


def _damage(rel: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def plant(ws: Path) -> Path:
        path = ws / "data" / rel
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
        return path

    return plant


def _remove(rel: str, named: str) -> Callable[[Path], Path]:
    def plant(ws: Path) -> Path:
        (ws / "data" / rel).unlink()
        return ws / "data" / named

    return plant


def _resized_mask(ws: Path) -> Path:
    from PIL import Image

    path = ws / "data" / "masks" / "shape_0003.png"
    Image.open(path).resize((16, 16)).save(path)
    return path


LABELLED = {
    "data.task": "classification",
    "data.labels": "labels.csv",
    "model.source": "timm",
    "model.name": "test_resnet",
    "loss": {"name": "cross_entropy", "params": {}, "terms": []},
}


def _labels(content: bytes) -> Callable[[Path], Path]:
    def plant(ws: Path) -> Path:
        path = ws / "data" / "labels.csv"
        path.write_bytes(content)
        return path

    return plant


DATA = [
    Case(
        "labels-one-image-two-spellings",
        "./images/shape_0001.png is images/shape_0001.png, listed again (first on line 2)",
        overrides=LABELLED,
        plant=_labels(b"path,label\nimages/shape_0001.png,circle\n./images/shape_0001.png,square\n"),
    ),
    Case(
        "labels-not-utf8",
        "labels.csv:3: byte 0xe9 at column 4 is not UTF-8",
        overrides=LABELLED,
        plant=_labels(b"path,label\nimages/shape_0001.png,x\ncaf\xe9.png,y\n"),
    ),
    Case(
        "labels-huge-field",
        "labels.csv:2: a field longer than 131072 characters",
        overrides=LABELLED,
        plant=_labels(b"path,label\n" + b"b" * 140_000 + b".png,x\n"),
    ),
    Case("truncated-image", "truncated", plant=_damage("images/shape_0001.png", lambda b: b[: len(b) // 2])),
    Case("empty-image", "empty file (0 bytes)", plant=_damage("images/shape_0002.png", b"")),
    Case("not-an-image", "not an image format PIL can read", plant=_damage("images/shape_0004.png", b"hello")),
    Case("corrupt-mask", "not a readable mask", plant=_damage("masks/shape_0005.png", lambda b: b[:40])),
    Case("image-without-mask", "without a mask", plant=_remove("masks/shape_0006.png", "images/shape_0006.png")),
    Case("mask-size-differs", "a mask must have its image's size", plant=_resized_mask),
    Case(
        "class-count-differs-from-masks",
        "data.num_classes is 3 but the masks are binary",
        overrides={"data.num_classes": 3, "loss.name": "dice"},
        plant=lambda ws: ws / "data" / "masks",
    ),
]


# --- run faults: refused by the stage that meets them ---------------------------------------------


def _evil_checkpoint(ws: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ws / 'PWNED'}",))

    path = ws / "outputs/train/checkpoint/last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": "x", "payload": Payload()}, path)
    return path


def _weights_file(content: bytes | None, name: str) -> Callable[[Path], Path]:
    def plant(ws: Path) -> Path:
        path = ws / name
        if content is None:
            torch.save({"weight": torch.zeros(1), "hook": Path("x")}, path)  # a pickled object
        else:
            path.write_bytes(content)
        return path

    return plant


def _missing(rel: str) -> Callable[[Path], Path]:
    def plant(ws: Path) -> Path:
        (ws / rel).unlink()
        return ws / rel

    return plant


RUN = [
    Case(
        "planted-pickle-checkpoint", "refused: it holds pickled Python objects", stage="train", plant=_evil_checkpoint
    ),
    Case(
        "pickled-object-in-weights",
        "refused: it holds pickled Python objects",
        stage="model",
        overrides={"model.pretrained": "w.pt"},
        plant=_weights_file(None, "w.pt"),
    ),
    Case(
        "corrupt-weights",
        "not a readable torch file",
        stage="model",
        overrides={"model.pretrained": "w.pt"},
        plant=_weights_file(b"garbage", "w.pt"),
    ),
    Case(
        "empty-weights",
        "not a readable torch file",
        stage="model",
        overrides={"model.pretrained": "w.pt"},
        plant=_weights_file(b"", "w.pt"),
    ),
    Case(
        "model-before-split", "run the split stage first", stage="model", plant=_missing("outputs/split/manifest.json")
    ),
    Case(
        "train-before-model",
        "run the model stage first",
        stage="train",
        plant=_missing("outputs/model/init.safetensors"),
    ),
    Case("evaluate-before-train", "run the train stage first", stage="evaluate"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Split and model done; a dvc.lock as DVC would have left it."""
    params = make_workspace(tmp_path_factory.mktemp("base"))
    (params.parent / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return params.parent


@pytest.mark.parametrize("case", CONFIG + DATA + RUN, ids=lambda c: c.id)
def test_bad_input_is_refused_located_and_nothing_is_written(
    case: Case, base_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    if case in CONFIG and case.key is not None and case.stage != "split":  # a check's fault: its key's stage
        assert case.stage == _first_reader(case.key), case.key
    ws = tmp_path / "ws"
    shutil.copytree(base_workspace, ws)
    params = write_params(ws / "params.yaml", ws / "params.yaml", replace=case.replace, **case.overrides)
    named = case.plant(ws) if case.plant else None
    before = _snapshot(ws)
    capsys.readouterr()

    status = importlib.import_module(f"stages.{case.stage}").main(["--params", str(params)])

    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and 'File "' not in err, err
    assert case.expect in err, err
    if case.key is not None:  # config: file:line:col: dotted.key
        assert re.search(rf"{re.escape(str(params))}:\d+:\d+: {re.escape(case.key)}: ", err), err
    elif named is not None:  # data and run faults: the path
        assert str(named) in err, err
    else:
        assert str(params) in err or str(ws) in err, err
    assert _snapshot(ws) == before, "the failed stage wrote or changed files"
    assert not (ws / "PWNED").exists(), "a planted payload ran"


@pytest.mark.parametrize("case", [c for c in CONFIG if c.key is not None], ids=lambda c: c.id)
def test_the_validate_stage_refuses_every_config_fault(
    case: Case, base_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """``dvc repro`` runs the validate stage first: it refuses every config fault, located, before any
    other stage works, and writes nothing."""
    ws = tmp_path / "ws"
    shutil.copytree(base_workspace, ws)
    params = write_params(ws / "params.yaml", ws / "params.yaml", replace=case.replace, **case.overrides)
    before = _snapshot(ws)
    capsys.readouterr()
    assert importlib.import_module("stages.validate").main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(params))}:\d+:\d+: {re.escape(case.key)}: ", err), err
    assert case.expect in err and "Traceback" not in err, err
    assert _snapshot(ws) == before


def test_a_dozen_independent_errors_are_all_reported(tmp_path: Path):
    """A schema error in one section never hides another section's checks."""
    from tests.conftest import problems_by_key

    path = write_params(
        tmp_path / "params.yaml",
        link=True,
        **{
            "data.mask_suffix": 5,  # schema, data
            "data.root": 7,  # schema, data
            "split.fractions": {"train": 0.5, "val": 0.2, "test": 0.2},  # check, split
            "augment.train": ["Flipr"],  # check, augment
            "model.freeze": ["encoders.*"],  # check, model
            "loss": {"name": "focal", "params": {"alpha": "high"}, "terms": []},  # check, loss
            "optimizer.lr": "fast",  # schema, optimizer
            "optimizer.name": "AdamWW",  # check, optimizer
            "scheduler": {"name": "StepLR", "params": {"step_size": 2, "gamma": "abc"}},  # check, scheduler
            "precision.dtype": "fp16",
            "train.device": "cpu",  # check, precision
            "train.batch_size": 0,  # schema, train
            "tracking.uri": "./mlruns",  # check, tracking
        },
    )
    found = problems_by_key(path)
    expected = {
        "data.mask_suffix",
        "data.root",
        "split.fractions",
        "augment.train[0]",
        "model.freeze",
        "loss.params.alpha",
        "optimizer.lr",
        "optimizer.name",
        "scheduler.params.gamma",
        "precision.dtype",
        "train.batch_size",
        "tracking.uri",
    }
    assert expected <= set(found), sorted(set(expected) - set(found))


def test_the_catalogue_is_large():
    assert len(CONFIG + DATA + RUN) >= 40


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """User code named as 'tests.user_losses:...' imports from the repo, wherever the test runs."""
    monkeypatch.syspath_prepend(str(REPO))
