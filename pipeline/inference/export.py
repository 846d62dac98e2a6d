"""A trained model file exported to ONNX or TorchScript, kept only once it reproduces PyTorch.

The exported graph is the model as predict uses it (:class:`~pipeline.inference.predictor.Predictor`):

- input ``images``: uint8 RGB ``[batch, 3, height, width]``, values 0-255, each image resized to the
  recipe's image size (and the recipe's ``eval_augment`` applied, usually none) as
  ``Predictor.prepare`` does. The normalisation (the recipe's mean/std) is inside the graph, so a
  caller cannot apply the wrong one.
- output ``logits``: float32 ``[batch, C]`` (classification) or ``[batch, C, height, width]``
  (segmentation; binary tasks have one channel, foreground where sigmoid > the recipe's threshold),
  exactly ``Predictor.logits``.

The batch dimension is always dynamic; height and width are too when the architecture allows
(fully convolutional U-Nets, classifiers with global pooling). That is checked, not assumed: the
file is written to a temporary path, loaded back (onnxruntime on the CPU, or ``torch.jit.load``) and
run on a batch of 2 at the recipe's size and a batch of 1 at an odd second size; the largest absolute
logit difference from PyTorch (``Predictor.logits``) must be at most ``tolerance``. If the dynamic
export fails any of that (ViT-style models take one size only; a transposed-convolution U-Net needs
sizes divisible by 2**depth, which both exporters bake in without a word), it is redone with height and
width fixed and checked on a batch of 1 and 2 at the recipe's size; only a failure there is an error,
and then nothing is renamed into place.

ONNX uses torch's ``torch.export``-based exporter (``dynamo=True``, which needs onnxscript): the legacy
TorchScript-based exporter still exists in torch 2.14 but is deprecated, traces shape comparisons into
constants and names output dims arbitrarily; the new one gives an optimised graph with named dims
(``batch``, ``height``, ``width``) shared by input and output. TorchScript is traced
(``torch.jit.script`` fails on many timm models). The recipe travels in the ONNX ``metadata_props``
(TorchScript: a sidecar ``<file>.json``): the model file's recipe JSON under ``yamltrain.model`` plus
readable keys (:func:`describe`).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.atomic import atomic_path, write_json
from pipeline.config.building import one_line
from pipeline.config.errors import PipelineError
from pipeline.config.schema import check_value
from pipeline.inference.predictor import Predictor
from pipeline.models.file import META_KEY, ModelInfo
from pipeline.models.input_contract import normalise
from pipeline.overwrite import refuse_overwrite, writable_file

FORMATS = ("onnx", "torchscript")
DEFAULT_TOLERANCE = 1e-4  # the export section's defaults (schemas/sections/export.schema.json)
DEFAULT_OPSET = 20
EXPORT = "sections/export.schema.json#/properties"  # the options obey these rules (opset 18 to 23: torch's)
INPUT, OUTPUT = "images", "logits"
CPU = torch.device("cpu")

Runner = Callable[[torch.Tensor], np.ndarray]


class Deployable(nn.Module):
    """uint8 images in, logits out: the predictor's normalisation and network as one module."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.model.to(CPU).eval()
        self.mean, self.std = tuple(predictor.info.mean), tuple(predictor.info.std)
        self.channels = int(predictor.info.config.get("in_chans", 3))
        # normalise() caches its constants per device; build them now, with real tensors, so that
        # tracing (which runs this module on fake tensors) finds them instead of caching fakes.
        normalise(torch.zeros(1, self.channels, 1, 1, dtype=torch.uint8), CPU, mean=self.mean, std=self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalise(images, CPU, mean=self.mean, std=self.std)).float()


@dataclass
class ExportReport:
    """What was written and how closely it matched PyTorch (one entry per checked input shape)."""

    path: Path
    format: str
    dynamic_size: bool
    tolerance: float
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    note: str | None = None

    @property
    def max_abs_diff(self) -> float:
        return max(diff for _, diff in self.checks)

    def summary(self) -> str:
        shapes = " and ".join(f"[{','.join(map(str, shape))}]" for shape, _ in self.checks)
        _, channels, *hw = self.checks[0][0]
        dims = ", ".join(map(str, ["batch", channels, *(("height", "width") if self.dynamic_size else hw)]))
        return (
            f"{self.path} ({self.format}): largest absolute logit difference from PyTorch "
            f"{self.max_abs_diff:.3g} on {shapes} (tolerance {self.tolerance:g}); takes uint8 "
            f"[{dims}]" + (f"; {self.note}" if self.note else "")
        )


def sidecar_path(path: str | Path) -> Path:
    """Where the metadata of a TorchScript file is kept: ``<file>.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def second_size(hw: tuple[int, int]) -> tuple[int, int]:
    """The other spatial size checked: 9 and 7 pixels more (odd, for the usual even sizes, and no longer
    square), so that a graph that silently assumes the recipe's size or its divisibility is caught."""
    return hw[0] + 9, hw[1] + 7


def describe(info: ModelInfo, *, dynamic_size: bool, fmt: str) -> dict[str, Any]:
    """The metadata an exported file carries: the recipe (:meth:`ModelInfo.recipe`) under the model
    file's own key, and readable keys that say how to call the graph."""
    height, width = ("height", "width") if dynamic_size else info.image_hw
    spatial = "" if info.task in ("classification", "multilabel") else f", {height}, {width}"
    channels = int(info.config.get("in_chans", 3))
    pixels = "RGB" if channels == 3 else f"{channels}-channel"
    return {
        META_KEY: info.recipe(),
        "format": fmt,
        "task": info.task,
        "class_names": info.classes,
        "image_size": list(info.image_hw),
        "input": f"{INPUT}: uint8 {pixels} [batch, {channels}, {height}, {width}], 0-255, each image resized to "
        f"{info.image_hw[0]}x{info.image_hw[1]} (height x width); normalised inside the graph",
        "output": f"{OUTPUT}: float32 [batch, {info.num_outputs}{spatial}]; "
        + (
            f"one sigmoid per class, a class present where sigmoid > its threshold ({info.threshold})"
            if info.task == "multilabel"
            else "softmax over classes"
            if info.num_outputs > 1
            else f"sigmoid > {info.threshold} is foreground"
        ),
        "input_shape": ["batch", channels, height, width],
        "threshold": info.threshold,
    }


def export_model(
    weights: str | Path,
    fmt: str,
    out: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = True,
    trust_code: bool = False,
) -> ExportReport:
    """Export the model file ``weights`` to ``out`` as ``fmt`` (onnx or torchscript), check it
    against PyTorch and keep it only if every logit is within ``tolerance``; else raise
    :class:`PipelineError` and write nothing. ``dynamic_size=False`` fixes height and width. The
    options obey the export section's rules and ``out`` may not be (or replace) the model file; both
    are checked before any work."""
    if fmt not in FORMATS:
        raise PipelineError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    check_value(f"{EXPORT}/tolerance", tolerance, "--tolerance")
    if fmt == "onnx":
        check_value(f"{EXPORT}/opset", opset, "--opset")
    out = Path(out)
    written = [out] + ([sidecar_path(out)] if fmt == "torchscript" else [])
    for path in written:
        writable_file(path)
    refuse_overwrite(written, [Path(weights)])
    try:
        return _export(
            weights, fmt, out, tolerance=tolerance, opset=opset, dynamic_size=dynamic_size, trust_code=trust_code
        )
    except OSError as exc:  # the folder refused the temporary file or the rename
        raise PipelineError(f"--out {out}: cannot write it ({exc.strerror or exc}); nothing was written") from None


def _export(
    weights: str | Path, fmt: str, out: Path, *, tolerance: float, opset: int, dynamic_size: bool, trust_code: bool
) -> ExportReport:
    predictor = Predictor.from_file(weights, device="cpu", trust_code=trust_code)
    module, info = Deployable(predictor), predictor.info
    (height, width), channels = info.image_hw, module.channels
    first = _images(2, channels, (height, width), seed=0)
    report = ExportReport(out, fmt, dynamic_size, tolerance)
    with atomic_path(out) as tmp:
        if dynamic_size:
            other = _images(1, channels, second_size((height, width)), seed=1)
            try:
                report.checks = _write_and_check(
                    fmt, module, predictor, tmp, [first, other], dynamic=True, opset=opset, tolerance=tolerance
                )
            except _Failed as exc:
                report.dynamic_size, report.note = False, f"height and width fixed at {height}x{width} ({exc})"
        if not report.dynamic_size:
            try:
                report.checks = _write_and_check(
                    fmt, module, predictor, tmp, [first, first[:1]], dynamic=False, opset=opset, tolerance=tolerance
                )
            except _Failed as exc:
                raise PipelineError(f"{out}: {exc}; nothing was written") from None
        if fmt == "torchscript":
            write_json(sidecar_path(out), describe(info, dynamic_size=report.dynamic_size, fmt=fmt))
    return report


def _images(n: int, channels: int, hw: tuple[int, int], *, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, *hw), generator=generator, dtype=torch.uint8)


class _Failed(Exception):
    """The export could not be written, loaded or run, or differs from PyTorch (the message says which)."""


def _write_and_check(
    fmt: str,
    module: Deployable,
    predictor: Predictor,
    tmp: Path,
    batches: list[torch.Tensor],
    *,
    dynamic: bool,
    opset: int,
    tolerance: float,
) -> list[tuple[tuple[int, ...], float]]:
    """Write the exported module to ``tmp``, load it back and compare it with PyTorch on each batch."""
    try:
        if fmt == "onnx":
            metadata = describe(predictor.info, dynamic_size=dynamic, fmt=fmt)
            _write_onnx(module, batches[0], tmp, dynamic=dynamic, opset=opset, metadata=metadata)
        else:
            _write_torchscript(module, batches[0], tmp)
        run = _onnx_runner(tmp) if fmt == "onnx" else _torchscript_runner(tmp)
    except Exception as exc:  # the exporters fail in many ways; their last line says which
        raise _Failed(f"the {fmt} export of {predictor.info.config['name']} failed: {_last_line(exc)}") from None
    checks = []
    for batch in batches:
        shape = list(batch.shape)
        try:
            want = predictor.logits(batch).numpy()
        except Exception as exc:  # a size the model itself does not take (ViT: a multiple of its patch)
            raise _Failed(f"the model does not take {shape}: {_last_line(exc)}") from None
        try:
            got = run(batch)
        except Exception as exc:
            raise _Failed(f"the exported model does not run on {shape}: {_last_line(exc)}") from None
        diff = _max_abs_diff(got, want)
        if diff > tolerance:
            raise _Failed(
                f"the exported {fmt} model's logits differ from PyTorch's by {diff:.3g} on {shape}, "
                f"above the tolerance {tolerance:g}"
            )
        checks.append((tuple(shape), diff))
    return checks


def _last_line(exc: BaseException) -> str:
    """The gist of a long error (TorchScript's and torch.export's put it last)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return one_line(RuntimeError(lines[-1]) if lines else exc, 200)


def _max_abs_diff(exported: np.ndarray, reference: np.ndarray) -> float:
    if exported.shape != reference.shape:
        raise _Failed(f"the exported model's output is {list(exported.shape)}, PyTorch's {list(reference.shape)}")
    return float(np.abs(exported.astype(np.float64) - reference).max())


def _write_onnx(
    module: Deployable, sample: torch.Tensor, tmp: Path, *, dynamic: bool, opset: int, metadata: dict[str, Any]
) -> None:
    """Export with torch.export (named dims: batch, height, width) and store ``metadata`` as
    metadata_props (strings as they are, other values as JSON)."""
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (sample,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: axes},
            opset_version=opset,
            verbose=False,
        )
    assert program is not None  # dynamo=True returns the program
    program.model.metadata_props.update(
        {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    )
    program.save(str(tmp), external_data=False)
    onnx.checker.check_model(str(tmp), full_check=True)


def _onnx_runner(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # a size the graph does not take is reported by the caller, not logged
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run([OUTPUT], {INPUT: batch.numpy()})[0]


def _write_torchscript(module: Deployable, sample: torch.Tensor, tmp: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and jit's deprecation; the check that follows decides
        traced = torch.jit.trace(module, sample, check_trace=False)
        torch.jit.save(traced, str(tmp))


def _torchscript_runner(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(batch).numpy()

    return run


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file (ONNX metadata_props, or the TorchScript sidecar), decoded."""
    path = Path(path)
    if path.suffix != ".onnx":
        return json.loads(sidecar_path(path).read_text())
    import onnx

    return {p.key: _decoded(p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _decoded(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:  # stored as plain text
        return value
