"""A training or evaluation batch moved to the training device: images normalised there (the model-input
contract of :mod:`pipeline.models.input_contract`), targets as int64 (class indices) or float32
(multilabel multi-hot vectors)."""

from __future__ import annotations

import torch

from pipeline.models.input_contract import normalise


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device, *, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,C,H,W] images -> normalised float32 on ``device``; targets -> int64 on ``device``
    (multilabel float targets stay float32)."""
    y = targets.to(device, non_blocking=device.type == "cuda")
    y = y.float() if y.is_floating_point() else y.long()
    return normalise(images, device, channels_last=channels_last), y
