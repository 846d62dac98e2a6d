"""The MLflow Model of a trained run, as "models from code": MLflow stores this file and the model
file (the ``weights`` artifact), never a pickled module, so the model loads wherever this package is
importable (the logged model carries it in its code paths).

Input: a uint8 array of RGB images ``[N, H, W, 3]`` (any size: each is prepared as evaluate prepares
images). Output: classification, class probabilities ``[N, C]`` (float32, columns in class order);
segmentation, class-index masks ``[N, H, W]`` (uint8) at the input size.
"""
from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class TrainedModel(PythonModel):
    """Rebuilds the network from the model file's recipe on load; predicts like ``python -m pipeline predict``."""

    def load_context(self, context: Any) -> None:
        from pipeline.inference.predictor import Predictor

        self.predictor = Predictor.from_file(context.artifacts["weights"], device="auto")

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads type hints as a schema
        import torch
        from PIL import Image

        from pipeline.inference.predictor import mask_at_size

        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images [N, H, W, 3], got an array of shape {images.shape}")
        batch = torch.stack([self.predictor.prepare(Image.fromarray(image)) for image in images])
        logits = self.predictor.logits(batch)
        if self.predictor.task == "classification":
            return self.predictor.probabilities(logits).cpu().numpy().astype(np.float32)
        classes = self.predictor.classes(logits)
        size = (images.shape[2], images.shape[1])
        return np.stack([mask_at_size(mask, size) for mask in classes]).astype(np.uint8)


mlflow.models.set_model(TrainedModel())
