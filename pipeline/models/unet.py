"""U-Nets for segmentation: the classic double-conv U-Net, and one whose encoder is a timm backbone.

Both name their parts the same way, which the model stage relies on: ``encoder.*``, ``decoder.*``
and ``head`` (the final 1x1 convolution, the only layer whose shape depends on the number of
classes, so it is the layer a fine-tuning run replaces). Both accept any input size: the decoder
resizes to each skip connection instead of assuming sizes divisible by 2**depth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from timm.models import FeatureInfo

UPSAMPLING = ("bilinear", "transposed")


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv -> BatchNorm -> ReLU) twice; convs without bias since BatchNorm follows."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """Up-sample ``x`` to the skip's size, concatenate the skip, then a double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str):
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        self.upsampling = upsampling
        # Transposed: a learned 2x up-sampling that also halves the channels (the original U-Net);
        # bilinear: parameter-free, the channels are reduced by the double conv instead.
        self.up = (
            nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            if upsampling == "transposed"
            else nn.Identity()
        )
        up_channels = in_channels // 2 if upsampling == "transposed" else in_channels
        self.conv = double_conv(up_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class ClassicUNet(nn.Module):
    """The classic U-Net (model.name: classic): double convs, max-pool down, bilinear or transposed up.

    ``depth`` levels down, the channels doubling at each; the decoder mirrors the encoder."""

    def __init__(
        self, *, in_chans: int, num_outputs: int, base_channels: int = 16, depth: int = 3, upsampling: str = "bilinear"
    ):
        super().__init__()
        channels = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [double_conv(in_chans, channels[0])]
            + [double_conv(channels[i - 1], channels[i]) for i in range(1, depth + 1)]
        )
        self.decoder = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i], upsampling) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_outputs, 1)
        self.grad_checkpointing = False  # model.grad_checkpointing: a training-time setting, not recorded

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder block in the backward pass instead of keeping its activations (timm's
        method name, so :func:`pipeline.models.networks.set_grad_checkpointing` treats both alike)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        # only when a backward pass will follow: evaluation, ONNX export and TorchScript see plain calls
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for level, block in enumerate(self.encoder):
            x = x if level == 0 else F.max_pool2d(x, 2)
            x = checkpointed(block, x) if recompute else block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)


def checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` whose activations are recomputed in the backward pass (non-reentrant checkpoint).
    The recomputation leaves BatchNorm's running statistics alone, so a step updates them once, as
    without checkpointing (a plain checkpoint would apply their momentum twice)."""
    return checkpoint(
        block, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _frozen_norm_stats(block))
    )


@contextlib.contextmanager
def _frozen_norm_stats(block: nn.Module) -> Iterator[None]:
    """BatchNorm's running statistics (and batch counter) as they were before the recomputation: it
    runs the same code as the forward (checkpoint insists on it), and its update is then undone."""
    buffers = [
        buffer
        for module in block.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


class TimmUNet(nn.Module):
    """U-Net whose encoder is any timm backbone (model.name: the timm name), built with features_only.

    The encoder's first ``depth`` feature levels are used; a double-conv decoder climbs back up the
    skips, and the last level is resized to the input size before the head."""

    def __init__(
        self,
        encoder_name: str,
        *,
        in_chans: int,
        num_outputs: int,
        base_channels: int = 16,
        depth: int = 5,
        upsampling: str = "bilinear",
        **encoder_kwargs: Any,
    ):
        super().__init__()
        self.encoder = create_timm_encoder(encoder_name, in_chans=in_chans, depth=depth, **encoder_kwargs)
        # every timm features_only model sets it; Module.__getattr__ types attributes as Tensor | Module
        feature_info = cast("FeatureInfo", self.encoder.feature_info)
        channels: Sequence[int] = feature_info.channels()
        decoder_channels = [base_channels * 2**level for level in range(len(channels))]
        self.decoder = nn.ModuleList()
        deep = channels[-1]
        for level in reversed(range(len(channels) - 1)):
            self.decoder.append(UpBlock(deep, channels[level], decoder_channels[level], upsampling))
            deep = decoder_channels[level]
        self.final = double_conv(deep, base_channels)
        self.head = nn.Conv2d(base_channels, num_outputs, 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The encoder's own gradient checkpointing (timm's ``set_grad_checkpointing``); an encoder
        without it raises ValueError."""
        setter = getattr(self.encoder, "set_grad_checkpointing", None)
        if setter is None:
            raise ValueError(f"its timm encoder ({type(self.encoder).__name__}) has no gradient checkpointing")
        setter(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = list(self.encoder(x))
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(self.final(x))


def create_timm_encoder(name: str, *, in_chans: int, depth: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` keeping the first ``depth`` feature levels.

    ``kwargs`` go to timm (``pretrained=True``, ``pretrained_cfg_overlay=dict(file=...)``): timm
    then loads a classification checkpoint into the backbone, drops its classifier and adapts the
    input convolution itself."""
    import timm  # lazily: importing timm costs seconds, and the classic U-Net never needs it

    try:
        encoder = timm.create_model(
            name, features_only=True, in_chans=in_chans, out_indices=tuple(range(depth)), **kwargs
        )
    except (RuntimeError, AssertionError, IndexError, ValueError, TypeError) as exc:
        if kwargs.get("pretrained"):
            raise  # a weights problem; the caller explains it
        raise ValueError(
            f"timm model {name!r} cannot serve as a U-Net encoder with depth {depth} "
            f"(features_only with {depth} feature levels): {exc}"
        ) from exc
    return encoder
