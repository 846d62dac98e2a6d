"""An exported ONNX file as a :class:`~pipeline.inference.predictor.Predictor`: ``python -m pipeline
predict --model model.onnx`` runs the graph with onnxruntime, preparing images and (``data.resize:
none``) tiling whole images exactly as the model file's predictor does; the exported graph takes one
tile (or one resized batch), the recipe in its metadata says which."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config.errors import PipelineError
from pipeline.config.schema import check_value
from pipeline.inference.export import INPUT, OUTPUT, read_metadata
from pipeline.inference.predictor import EVALUATE, Predictor, option_threshold
from pipeline.models.file import META_KEY, ModelInfo
from pipeline.models.recipe import check_recipe


class OnnxPredictor(Predictor):
    """An exported ONNX file (``python -m pipeline export``) as a predictor: its recipe from the file's
    metadata, the graph run by onnxruntime on the CPU. The graph takes uint8 images and normalises
    inside, so :meth:`logits` feeds it the prepared batch (or, tiled, each tile) as it is."""

    @classmethod
    def from_onnx(
        cls, path: str | Path, *, threshold: float | dict[str, float] | None = None, flip_tta: bool = False
    ) -> OnnxPredictor:
        try:
            import onnxruntime
        except ImportError:
            raise PipelineError(
                f"{path}: predicting with an ONNX file needs onnxruntime (pip install onnxruntime)"
            ) from None
        try:
            values = read_metadata(path).get(META_KEY)
        except Exception as exc:  # any unreadable file is one line
            raise PipelineError(f"{path}: not a readable ONNX file ({exc})") from None
        if not isinstance(values, dict):
            raise PipelineError(f"{path}: carries no yamltrain recipe (export it with python -m pipeline export)")
        check_recipe(values, path, trust_code=True)  # the graph is run, never the code it names
        if threshold is not None:
            check_value(f"{EVALUATE}/threshold", threshold, "--threshold")
        info = ModelInfo.from_recipe(values, list(values.get("frozen") or []))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run([OUTPUT], {INPUT: batch.numpy()})[0])

        predictor = cls(run, info, torch.device("cpu"), option_threshold(threshold, info))  # type: ignore[arg-type]
        predictor.flip_tta = flip_tta
        return predictor

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous()
        out = self.model(batch).float()
        if self.flip_tta:
            mirrored = self.model(torch.flip(batch, dims=[3]).contiguous()).float()
            out = (out + (torch.flip(mirrored, dims=[3]) if self.task == "segmentation" else mirrored)) / 2
        return out
