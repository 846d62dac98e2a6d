"""What every model here is fed: uint8 images normalised on the device the params choose. Batches leave
the DataLoader as uint8 and are normalised on the device: 4x less host->device traffic than float32, and
the normalisation runs where the compute is. Training, evaluation, predict and export share this, so a
prediction sees exactly what the model saw in training."""

from __future__ import annotations

import functools

import torch

from pipeline.config.errors import PipelineError
from pipeline.models.file import IMAGENET_MEAN, IMAGENET_STD  # what a model file records by default

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD  # the defaults; a model file records its own


def resolve_device(name: str, *, key: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for an absent CUDA device is an error
    naming the params ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{key} is {name!r} but no CUDA device is available; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PipelineError(f"{key} is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


@functools.lru_cache(maxsize=16)
def _affine(
    device: torch.device, channels: int, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_uint8 * scale + shift == (x / 255 - mean) / std``, built once per device: creating the
    constants on the device every step would be a blocking copy (a host sync) per batch."""
    mean_t = torch.tensor((tuple(mean) * channels)[:channels]).view(1, -1, 1, 1)
    std_t = torch.tensor((tuple(std) * channels)[:channels]).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (-mean_t / std_t).to(device)


def normalise(
    images: torch.Tensor,
    device: torch.device,
    *,
    channels_last: bool = False,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> torch.Tensor:
    """uint8 [N,C,H,W] images -> normalised float32 on ``device``: what every model here sees
    (training, evaluation, predict)."""
    x = images.to(device, non_blocking=device.type == "cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # on uint8: 4x less memory to move
    scale, shift = _affine(device, x.shape[1], tuple(mean), tuple(std))
    return torch.addcmul(shift, x.float(), scale)
