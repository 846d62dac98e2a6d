"""The model-input contract: on-device normalisation exact to float rounding, channels_last kept; the
device choice naming its params key."""

from __future__ import annotations

import pytest
import torch

from pipeline.config.errors import PipelineError
from pipeline.models.input_contract import MEAN, STD, normalise, resolve_device


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalisation_matches_the_formula(channels_last):
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = normalise(images, torch.device("cpu"), channels_last=channels_last)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert x.dtype == torch.float32
    assert torch.allclose(x, expected, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_absent_cuda_is_named_by_key():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    with pytest.raises(PipelineError, match=r"train\.device is 'cuda' but no CUDA device"):
        resolve_device("cuda", key="train.device")
    assert resolve_device("auto", key="train.device").type == "cpu"
