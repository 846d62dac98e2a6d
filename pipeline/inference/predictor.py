"""A trained model file, ready to predict: the module rebuilt from its recipe, and images prepared
exactly as the evaluate stage prepares them (the same resize, evaluation augmentation and
normalisation functions), so a prediction here equals evaluate's for the same image. A recipe with
``tile`` (``data.resize: none``) keeps images at their size and predicts the whole image by tiles
(:func:`pipeline.models.tiling.tiled_logits`, the function evaluate calls too); an exported ONNX file
predicts the same way (:class:`pipeline.inference.onnx_predictor.OnnxPredictor`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.config.schema import check_value
from pipeline.data.dataset import chw_tensor, rgb_native, rgb_resized
from pipeline.models.file import ModelInfo, load_model
from pipeline.models.input_contract import normalise, resolve_device
from pipeline.models.tiling import rows_apply, tiled_logits_of
from pipeline.training.metrics import predict as classes_from_logits
from pipeline.training.multilabel_metrics import threshold_problems, thresholds_for

EVALUATE = "sections/evaluate.schema.json#/properties"  # predict's options obey the evaluate section's rules


@dataclass
class Predictor:
    """``model`` in eval mode on ``device`` with the file's recipe (``info``)."""

    model: torch.nn.Module
    info: ModelInfo
    device: torch.device
    threshold: float | dict[str, float]
    flip_tta: bool = False

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        threshold: float | dict[str, float] | None = None,
        flip_tta: bool = False,
        trust_code: bool = False,
    ) -> Predictor:
        """The model file at ``path`` on ``device``; ``threshold`` overrides the file's. Options are
        judged by the params.yaml rules of the evaluate keys they stand for (one line naming the
        option, never a traceback); the file's recipe by :func:`~pipeline.models.recipe.check_recipe`."""
        check_value(f"{EVALUATE}/device", device, "--device")
        if threshold is not None:
            check_value(f"{EVALUATE}/threshold", threshold, "--threshold")
        model, info = load_model(path, trust_code=trust_code)
        where = resolve_device(device, key="--device")
        predictor = cls(model.to(where).eval(), info, where, option_threshold(threshold, info), flip_tta)
        if info.eval_augment:
            try:
                _ = predictor._transform  # built now, so a bad recipe fails at load
            except PipelineError as exc:
                raise PipelineError(f"{path}: invalid recipe: eval_augment: {exc}") from None
        return predictor

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def tiled(self) -> bool:
        """Whether whole images are predicted by tiles (the recipe's ``tile``), not resized."""
        return bool(self.info.tile) and self.task == "segmentation"

    @torch.no_grad()
    def whole_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Float32 logits [C,H,W] on the CPU of one prepared uint8 [3,H,W] image at its own size, by the
        recipe's tiles (:func:`~pipeline.models.tiling.tiled_logits`); tiles of this predictor's logits."""
        return tiled_logits_of(self.logits, image, self.info.tile or {})

    def whole_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """[H,W] class indices of whole-image logits [C,H,W], in row blocks (bounded temporaries)."""
        return rows_apply(logits, self.classes)

    def whole_mask(self, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """The uint8 class-index mask of one prepared image (:meth:`prepare`) by tiles, at ``size`` =
        (width, height), the input's own: scaled back (nearest) where data.max_side shrank the image."""
        return mask_at_size(self.whole_classes(self.whole_logits(image)), size)

    def prepare(self, image: Image.Image, where: str | Path = "image") -> torch.Tensor:
        """An image as the model takes it: uint8 [3,H,W] at the recipe's size (tiled: at its own), evaluation augmentation
        applied (the evaluate stage's ManifestDataset does the same). 16-bit and float images are scaled
        by their real range (:class:`PipelineError` naming ``where`` for values with none, e.g. NaN)."""
        if self.tiled:  # its own size, or shrunk to the recipe's max_side (data.max_side) as training saw it
            array = rgb_native(image, where, (self.info.tile or {}).get("max_side"))
        else:
            array = rgb_resized(image, self.info.image_hw, where)
        if self.info.eval_augment:
            array, _ = self._transform(array, None)
        return chw_tensor(array)

    @functools.cached_property
    def _transform(self) -> Any:
        return build_transform(self.info.eval_augment, task=self.task)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a uint8 [N,3,H,W] batch; with flip TTA the mean of the image's and its
        mirror's (the mirror's flipped back for segmentation)."""
        x = normalise(batch, self.device, mean=self.info.mean, std=self.info.std)
        out = self.model(x).float()
        if self.flip_tta:
            mirrored = self.model(torch.flip(x, dims=[3])).float()
            out = (out + (torch.flip(mirrored, dims=[3]) if self.task == "segmentation" else mirrored)) / 2
        return out

    def classes(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices, as evaluate computes them (binary: sigmoid(logit) > threshold); multilabel:
        the 0/1 matrix [N, C] of classes whose probability is above their threshold."""
        if self.task == "multilabel":
            limits = torch.tensor(thresholds_for(self.threshold, self.info.classes), device=logits.device)
            return (torch.sigmoid(logits) > limits).to(torch.uint8)
        return classes_from_logits(logits, self.threshold)  # type: ignore[arg-type]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities: softmax over C, or [1 - p, p] for one sigmoid channel; multilabel
        one sigmoid per class (independent, not summing to 1)."""
        if self.task == "multilabel":
            return torch.sigmoid(logits)
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)


def option_threshold(threshold: float | dict[str, float] | None, info: ModelInfo) -> float | dict[str, float]:
    """predict's ``--threshold`` for the model ``info`` describes (None: the file's own): one number, or
    for a multilabel model a ``{class: value}`` mapping (classes it does not name take 0.5), its names
    checked against the model's classes as evaluate checks ``evaluate.threshold``'s."""
    if threshold is None:
        return info.threshold
    problems = threshold_problems(threshold, info.task, info.classes, key="--threshold")
    if problems:
        raise PipelineError("; ".join(f"{key}: {why}" for key, why in problems))
    return dict(threshold) if isinstance(threshold, dict) else float(threshold)


def mask_at_size(classes: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A [H,W] class-index mask resized (nearest: classes never blend) to ``size`` = (width, height)."""
    mask = Image.fromarray(classes.to("cpu", torch.uint8).numpy())
    return np.asarray(mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST))
