"""A batch on the device: images normalised by the model-input contract, targets int64, channels_last kept."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.input_contract import MEAN, STD
from pipeline.training.batches import to_device


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalisation_matches_the_formula(channels_last):
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    targets = torch.randint(0, 2, (2, 8, 8), dtype=torch.uint8)
    x, y = to_device(images, targets, torch.device("cpu"), channels_last=channels_last)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, expected, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert targets.shape == y.shape and torch.equal(y, targets.long())
