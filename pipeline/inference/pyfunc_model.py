"""The MLflow Model of a trained run, as "models from code": MLflow stores this file and the model
file (the ``weights`` artifact), never a pickled module, so the model loads wherever this package is
importable (the logged model carries it in its code paths).

Input: a uint8 array of RGB images ``[N, H, W, 3]`` (any size: each is prepared as evaluate prepares
images). Output: classification, class probabilities ``[N, C]`` (float32, columns in class order);
multilabel, one independent sigmoid probability per class ``[N, C]`` (float32; the recipe's thresholds
give the set); segmentation, class-index masks ``[N, H, W]`` (uint8) at the input size (a model trained
at native resolution, ``data.resize: none``, infers each whole image by overlapping tiles: ``evaluate.tile``).
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

TRUST_ENV = "YAMLTRAIN_TRUST_CODE"


def trusts_code(model_config: dict[str, Any] | None) -> bool:
    """Whether the loader asked to run user code a model file names (``--trust-code``'s equivalent):
    ``mlflow.pyfunc.load_model(uri, model_config={"trust_code": True})``, or ``YAMLTRAIN_TRUST_CODE=1``
    in the environment of ``mlflow models serve``. Off by default: a model file is data."""
    if model_config and model_config.get("trust_code") is True:
        return True
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def pixels(model_input: Any) -> np.ndarray:
    """The input as uint8 without silent changes: integers (or integral floats) 0..255 only; a float
    such as 0.5 or a value such as 300 is an error saying so in one line (never the whole array)."""
    from mlflow.exceptions import MlflowException

    values = np.asarray(model_input)
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind not in "iuf" or values.size == 0:
        raise MlflowException.invalid_parameter_value(
            f"expected uint8 RGB images [N, H, W, 3], got {values.dtype} values of shape {list(values.shape)}"
        )
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise MlflowException.invalid_parameter_value(
            "pixel values must be whole numbers 0..255; found fractions (send uint8 pixels, not normalised floats)"
        )
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise MlflowException.invalid_parameter_value(f"pixel values must lie in 0..255; found {low}..{high}")
    return values.astype(np.uint8)


class TrainedModel(PythonModel):
    """Rebuilds the network from the model file's recipe on load; predicts like ``python -m pipeline predict``."""

    def load_context(self, context: Any) -> None:
        from pipeline.inference.predictor import Predictor

        self.predictor = Predictor.from_file(
            context.artifacts["weights"], device="auto", trust_code=trusts_code(getattr(context, "model_config", None))
        )

    # The input's type hint is MLflow's own switch: np.ndarray is a hint it accepts without inferring a
    # schema from it (the logged signature says uint8 [N, H, W, 3]), and with none it warns at every load.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch
        from PIL import Image

        from pipeline.inference.predictor import mask_at_size

        images = pixels(model_input)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images [N, H, W, 3], got an array of shape {images.shape}")
        if self.predictor.tiled:  # native resolution: each image whole, by the recipe's tiles
            return np.stack(
                [
                    self.predictor.whole_mask(self.predictor.prepare(Image.fromarray(im)), im.shape[1::-1])
                    for im in images
                ]
            )
        batch = torch.stack([self.predictor.prepare(Image.fromarray(image)) for image in images])
        logits = self.predictor.logits(batch)
        if self.predictor.task in ("classification", "multilabel"):
            return self.predictor.probabilities(logits).cpu().numpy().astype(np.float32)
        classes = self.predictor.classes(logits)
        size = (images.shape[2], images.shape[1])
        return np.stack([mask_at_size(mask, size) for mask in classes]).astype(np.uint8)


mlflow.models.set_model(TrainedModel())
