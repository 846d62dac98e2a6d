"""The scoring pass shared by validation and evaluate: the loss weighted by batch size (checked against
hand-computed cross-entropies), the meter reset and filled, the per-batch hook, no_grad and float32."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.training.metrics import make_meter
from pipeline.training.precision import resolve_precision
from pipeline.training.scoring import LossSum, score

CPU = torch.device("cpu")
FP32 = resolve_precision({"dtype": "fp32", "channels_last": False, "tf32": False, "compile": False}, CPU)

# Two batches of 3 and 1 samples: logits the model returns, and the targets.
LOGITS = [torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.5, 0.5]]), torch.tensor([[0.0, 3.0]])]
TARGETS = [torch.tensor([0, 0, 1]), torch.tensor([1])]


class Scripted(torch.nn.Module):
    """Returns the next batch's logits from LOGITS (times a parameter, so autograd would track it)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = LOGITS[self.calls] * self.scale
        self.calls += 1
        return logits


def loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(len(t), 3, 2, 2, dtype=torch.uint8), t) for t in TARGETS]


def ce(logits: tuple[float, float], target: int) -> float:
    """Cross-entropy of two logits by hand: log(1 + exp(other - own))."""
    return math.log1p(math.exp(logits[1 - target] - logits[target]))


def test_loss_is_weighted_by_batch_size():
    meter = make_meter("classification", 2)
    result = score(Scripted().eval(), loader(), torch.nn.functional.cross_entropy, meter, FP32)
    per_sample = [ce((2, 0), 0), ce((0, 2), 0), ce((1.5, 0.5), 1), ce((0, 3), 1)]
    assert result.samples == 4
    assert result.mean() == pytest.approx(sum(per_sample) / 4, rel=1e-6)  # 0.90393
    assert result.mean() == pytest.approx(0.90393, abs=1e-5)
    batch_means = (sum(per_sample[:3]) / 3 + per_sample[3]) / 2  # 0.61881: what an unweighted mean gives
    assert abs(result.mean() - batch_means) > 0.28
    # argmax: 0, 1, 0, 1 against targets 0, 0, 1, 1 (rows = actual)
    assert meter.confusion_matrix() == [[1, 1], [1, 1]]
    assert meter.compute()["accuracy"] == 0.5


def test_meter_is_reset_first_and_the_hook_sees_every_batch():
    meter = make_meter("classification", 2)
    meter.update(torch.tensor([[0.0, 9.0]] * 5), torch.zeros(5, dtype=torch.long))  # a previous epoch's
    seen = []

    def hook(images, targets, logits, y):
        seen.append((images.shape[0], targets.tolist(), logits.dtype, logits.requires_grad, y.dtype))

    score(Scripted(), loader(), torch.nn.functional.cross_entropy, meter, FP32, on_batch=hook)
    assert seen == [(3, [0, 0, 1], torch.float32, False, torch.int64), (1, [1], torch.float32, False, torch.int64)]
    assert sum(map(sum, meter.confusion_matrix())) == 4  # only this pass


def test_bf16_autocast_still_feeds_float32_logits_and_a_float32_sum():
    bf16 = resolve_precision({"dtype": "bf16", "channels_last": False, "tf32": False, "compile": False}, CPU)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    dtypes = []
    result = score(
        net,
        loader(),
        torch.nn.functional.cross_entropy,
        make_meter("classification", 2),
        bf16,
        on_batch=lambda images, targets, logits, y: dtypes.append(logits.dtype),
    )
    assert dtypes == [torch.float32, torch.float32]
    assert result.total.dtype == torch.float32 and math.isfinite(result.mean())


def test_shard_sums_add_up_to_the_whole_split():
    """Why score returns sums: DDP ranks add theirs, then take one mean (what validation does)."""
    whole = score(Scripted(), loader(), torch.nn.functional.cross_entropy, make_meter("classification", 2), FP32)
    first = score(Scripted(), loader()[:1], torch.nn.functional.cross_entropy, make_meter("classification", 2), FP32)
    second_model = Scripted()
    second_model.calls = 1
    second = score(second_model, loader()[1:], torch.nn.functional.cross_entropy, make_meter("classification", 2), FP32)
    added = LossSum(first.total + second.total, first.samples + second.samples)
    assert added.samples == whole.samples == 4
    assert added.mean() == whole.mean()
    assert LossSum(torch.zeros(()), 0).mean() == 0.0  # a rank with no samples: no division by zero
