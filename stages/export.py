"""The export stage: the trained model as ONNX, checked against PyTorch before it is kept.

``python -m stages.export`` reads ``outputs/train/best.safetensors`` (its recipe travels with it, so no
other section is read) and writes ``outputs/export/model.onnx``: uint8 RGB images ``[batch, 3,
height, width]`` in (normalised inside the graph), logits out, the recipe in its metadata_props. The
file is kept only if onnxruntime reproduces PyTorch's logits within ``export.tolerance``
(:mod:`pipeline.inference.export`); TorchScript is one command away (``python -m pipeline export
--format torchscript``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline import outputs
from pipeline.config.params import ParamsView
from pipeline.inference.export import ExportReport, export_model
from pipeline.stage import run_stage

PARAMS = ("export",)


def export(view: ParamsView) -> ExportReport:
    """Export the best weights to ONNX, verified; return what was written and how close it came."""
    cfg = view["export"]
    weights = outputs.require(view.root, outputs.TRAIN_BEST)
    report = export_model(
        weights,
        "onnx",
        view.root / outputs.EXPORT_ONNX,
        tolerance=cfg["tolerance"],
        opset=cfg["opset"],
        dynamic_size=cfg["dynamic_size"],
        trust_code=True,
    )  # train wrote it from params.yaml's own model
    print(f"export: {report.summary()}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("export", PARAMS, export, argv)


if __name__ == "__main__":
    sys.exit(main())
