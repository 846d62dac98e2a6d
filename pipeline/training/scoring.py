"""One scoring pass over a loader, shared by validation in training and by the evaluate stage, so the
two compute the loss and the metrics the same way: no_grad, the precision plan's autocast, the loss
weighted by batch size, the confusion meter fed float32 logits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from pipeline.training.batches import to_device
from pipeline.training.metrics import Meter

# (host images uint8 [N,C,H,W], host targets, float32 logits, device targets int64) per batch.
BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class LossSum(NamedTuple):
    """The loss summed over samples (batch loss x batch size, on the device) and the sample count:
    sums, so that ranks can add theirs before the mean is taken."""

    total: torch.Tensor
    samples: int

    def mean(self) -> float:
        """The size-weighted mean loss (one host sync)."""
        return float(self.total.item() / max(self.samples, 1))


def score(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[Any],
    loss_fn: Any,
    meter: Meter,
    plan: Any,
    *,
    on_batch: BatchHook | None = None,
) -> LossSum:
    """Run ``model`` (already in eval mode: the caller's, as training flips it back and forth) over
    ``loader`` once; reset and fill ``meter``; return the loss sum and count.

    ``on_batch`` sees every batch (evaluate keeps confusion-plot samples and overlay images with it);
    nothing here reads a value back to the host, so the pass never waits on the device."""
    meter.reset()
    total = torch.zeros((), device=plan.device)
    count = 0
    with torch.no_grad(), plan.autocast():
        for images, targets in loader:
            x, y = to_device(images, targets, plan.device, channels_last=plan.channels_last)
            logits = model(x)
            total += loss_fn(logits, y).detach().float() * x.shape[0]
            count += x.shape[0]
            logits = logits.float()
            meter.update(logits, y)
            if on_batch is not None:
                on_batch(images, targets, logits, y)
    return LossSum(total, count)
