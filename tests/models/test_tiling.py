"""Tiled inference (pipeline.models.tiling): on an image four times the tile, with a real U-Net, the blended
logits equal a brute-force per-pixel weighted average of every tile's logits; and a 10,000 x 10,000 image
predicts with the logit sum as the only full-size array besides the image (peak RSS measured)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.models.tiling import tile_starts, tiled_logits, weights_1d
from pipeline.models.unet import ClassicUNet
from tests.conftest import REPO


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ClassicUNet(in_chans=3, num_outputs=3, base_channels=4, depth=2).eval()


def _as_model(net: torch.nn.Module):
    return lambda tiles: net(tiles.float() / 255.0)


def _brute_force(net, image: np.ndarray, tile: int, overlap: float, blend: str) -> torch.Tensor:
    """Every tile run alone; each pixel's logits the weighted mean over the tiles that cover it, with
    full-size sum and weight arrays: the definition, written the slow way."""
    height, width = image.shape[:2]
    total = torch.zeros(3, height, width, dtype=torch.float64)
    weight = torch.zeros(height, width, dtype=torch.float64)
    w1 = weights_1d(tile, blend).double()
    window = w1[:, None] * w1[None, :]
    for y in tile_starts(height, tile, overlap):
        for x in tile_starts(width, tile, overlap):
            crop = torch.from_numpy(np.ascontiguousarray(image[y : y + tile, x : x + tile].transpose(2, 0, 1)))
            with torch.no_grad():
                logits = net(crop[None].float() / 255.0)[0].double()
            total[:, y : y + tile, x : x + tile] += logits * window
            weight[y : y + tile, x : x + tile] += window
    return (total / weight).float()


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_tiled_logits_equal_a_brute_force_per_pixel_average(blend, overlap):
    net = _model()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # 4x the 16 px tile on each side
    tiled = tiled_logits(_as_model(net), image, tile=(16, 16), overlap=overlap, blend=blend, batch=5)
    expected = _brute_force(net, image, 16, overlap, blend)
    assert tiled.shape == (3, 64, 64)
    assert torch.allclose(tiled, expected, atol=1e-5, rtol=1e-5)
    # the blend is not a no-op: whole-image inference differs from the tiles' average
    with torch.no_grad():
        whole = net(torch.from_numpy(image.transpose(2, 0, 1)).float()[None] / 255.0)[0]
    assert (tiled - whole).abs().max() > 2e-4  # tile borders see padding the whole image does not


def test_odd_sizes_cover_every_pixel_and_a_small_image_is_padded():
    net = _model()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    tiled = tiled_logits(_as_model(net), image, tile=(16, 32), overlap=0.25, blend="gaussian")
    assert tiled.shape == (3, 45, 70) and torch.isfinite(tiled).all()
    assert tile_starts(45, 16, 0.25) == [0, 12, 24, 29]
    small = image[:10, :12]
    out = tiled_logits(_as_model(net), small, tile=(16, 16), overlap=0.25)
    padded = np.pad(small, ((0, 6), (0, 4), (0, 0)), mode="reflect")
    with torch.no_grad():
        direct = net(torch.from_numpy(padded.transpose(2, 0, 1).copy()).float()[None] / 255.0)[0, :, :10, :12]
    assert out.shape == (3, 10, 12) and torch.allclose(out, direct, atol=1e-5)


def test_a_tensor_image_gives_the_numpy_result():
    net = _model()
    image = np.random.default_rng(3).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    a = tiled_logits(_as_model(net), image, tile=(16, 16))
    b = tiled_logits(_as_model(net), torch.from_numpy(image).permute(2, 0, 1), tile=(16, 16))
    assert torch.equal(a, b)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    from pipeline.models.tiling import rows_apply, tiled_logits
    side = int(sys.argv[1])
    torch.set_num_threads(2)
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    model = lambda tiles: conv(tiles.float() / 255.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    image = np.full((side, side, 3), 7, dtype=np.uint8)
    image[::97] = 200
    started = time.perf_counter()
    with torch.no_grad():
        logits = tiled_logits(model, image, tile=(1024, 1024), overlap=0.125, blend="gaussian", batch=2)
        mask = rows_apply(logits, lambda x: (x[:, 0] > 0).to(torch.uint8))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak, "seconds": time.perf_counter() - started,
                      "mask": list(mask.shape)}))
    """
)


def measure_tiled_peak(side: int) -> dict:
    """Peak RSS of a fresh process predicting a ``side`` x ``side`` image by 1024 px tiles (1 channel)."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(side)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_10000_px_image_predicts_with_bounded_memory():
    side = 10_000
    result = measure_tiled_peak(side)
    image_bytes = side * side * 3
    logit_bytes = side * side * 4  # one channel, float32: the blend buffer
    mask_bytes = side * side
    tile_batch = 2 * 1024 * 1024 * (3 + 4 * 8)  # a batch of tiles and the conv's temporaries, generously
    assert result["mask"] == [side, side]
    used = result["peak"] - result["before"]
    assert used < image_bytes + logit_bytes + mask_bytes + tile_batch + (200 << 20), result
    # and far below what a full-size weight map and float image would add (4 + 12 bytes a pixel)
    assert used < image_bytes + logit_bytes + 2 * side * side + (400 << 20)
