"""What every built-in loss shares: the :data:`losses` registry, the three modes, and the target and
constant helpers.

Every loss takes logits. Binary means one logit channel (``C == 1``, sigmoid); multi-class means ``C >= 2``
(softmax); multilabel means ``C`` independent sigmoids. Logits are ``[N, C, H, W]`` (segmentation) or
``[N, C]`` (classification); targets are class indices ``[N, H, W]`` / ``[N]`` (int64), or for multilabel
multi-hot float32 ``[N, C]``. A loss class says which modes it takes in ``supports``.
Importing this module imports its package first, which registers every built-in loss.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.config.registry import Registry

losses = Registry("losses", noun="loss")
BINARY, MULTICLASS, MULTILABEL = "binary", "multiclass", "multilabel"


def binary_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """{0,1} class indices (or multilabel multi-hot vectors) -> float targets shaped like the logits."""
    if target.numel() != logits.numel():
        raise PipelineError(
            f"binary loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
            "do not match (expected one logit channel per target value)"
        )
    return target.reshape(logits.shape).to(logits.dtype)


def constant(loss: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor:
    """``loss.<name>`` (a number or a list of class weights) as a tensor on ``like``'s device and dtype,
    built once and kept: building it from the Python value every step is a blocking host-to-device
    copy (a host sync per step) on a GPU."""
    cache = loss.__dict__.setdefault("_constants", {})
    key = (name, like.device, like.dtype)
    if key not in cache:
        cache[key] = like.new_tensor(getattr(loss, name))
    return cache[key]
