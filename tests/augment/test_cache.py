"""The offline cache reads back exactly what was written, repeats from its seed, and fails clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.augment.cache import OfflineCacheDataset, write_cache, write_disabled
from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.seeding import loader_generator, worker_init_fn

SPEC = [
    {"Fliplr": {"p": 0.5}},
    {"Affine": {"rotate": [-30, 30], "mode": "reflect"}},
    {"AdditiveGaussianNoise": {"scale": [0, 10]}},
]


class Base(torch.utils.data.Dataset):
    """``n`` un-augmented samples as ManifestDataset returns them."""

    def __init__(self, n: int, task: str, size: tuple[int, int] = (10, 14)):
        rng = np.random.default_rng(n)
        self.images = rng.integers(0, 256, (n, 3, *size), dtype=np.uint8)
        self.masks = rng.integers(0, 3, (n, *size), dtype=np.uint8)
        self.task = task

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.from_numpy(self.masks[i]) if self.task == "segmentation" else torch.tensor(i % 3)
        return torch.from_numpy(self.images[i]), target


class Recording:
    """Wraps a transform and keeps every output, in call order."""

    def __init__(self, transform):
        self.transform, self.outputs = transform, []

    def reset(self) -> None:
        self.transform.reset()

    def __call__(self, image, mask=None):
        out = self.transform(image, mask)
        self.outputs.append((out[0].copy(), None if out[1] is None else out[1].copy()))
        return out


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_cache_reads_back_exactly_what_was_written(tmp_path, task):
    base, copies = Base(7, task), 3
    recording = Recording(build_transform(SPEC, task=task))
    index = write_cache(tmp_path / "cache", base, recording, task=task, copies=copies, shard_size=4, seed=1)
    assert index["samples"] == 7 and len(index["shards"]) == 6  # ceil(21 / 4)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["index.json"] + sorted(
        f"shard-{k:05d}.{kind}.npy" for k in range(6) for kind in ("images", "targets")
    )
    dataset = OfflineCacheDataset(tmp_path / "cache")
    assert len(dataset) == 7
    for epoch in range(copies + 1):
        dataset.set_epoch(epoch)
        for i in range(7):
            image, target = dataset[i]
            written_image, written_mask = recording.outputs[i * copies + epoch % copies]  # image-major calls
            assert image.dtype == torch.uint8 and image.shape == (3, 10, 14)
            assert np.array_equal(image.numpy(), written_image.transpose(2, 0, 1))
            if task == "segmentation":
                assert target.dtype == torch.uint8 and np.array_equal(target.numpy(), written_mask)
            else:
                assert target.dtype == torch.int64 and target.shape == () and int(target) == i % 3
    copies_of_0 = [OfflineCacheDataset(tmp_path / "cache", copy=c)[0][0] for c in range(copies)]
    assert not torch.equal(copies_of_0[0], copies_of_0[1])  # the copies are different augmentations


def test_same_seed_gives_byte_identical_shards(tmp_path):
    base = Base(5, "segmentation")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_cache(
            tmp_path / name,
            base,
            build_transform(SPEC, task="segmentation"),
            task="segmentation",
            copies=2,
            shard_size=100,
            seed=seed,
        )
    shard = "shard-00000.images.npy"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert (tmp_path / "a" / shard).read_bytes() != (tmp_path / "c" / shard).read_bytes()
    assert (tmp_path / "a" / "index.json").read_text() == (tmp_path / "b" / "index.json").read_text()


def test_cache_serves_a_dataloader_with_workers(tmp_path):
    write_cache(
        tmp_path / "cache",
        Base(6, "segmentation"),
        build_transform(SPEC, task="segmentation"),
        task="segmentation",
        copies=2,
        shard_size=4,
        seed=0,
    )
    dataset = OfflineCacheDataset(tmp_path / "cache")
    dataset[0]  # opens the memory maps here; workers must open their own
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=loader_generator(0),
        multiprocessing_context="fork",
    )
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 10, 14) and masks.shape == (4, 10, 14)
    assert torch.equal(images[1], dataset[1][0])


def test_disabled_cache_says_so_and_cannot_be_read(tmp_path):
    write_disabled(tmp_path / "cache")
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["enabled"] is False
    with pytest.raises(PipelineError, match="enabled was false"):
        OfflineCacheDataset(tmp_path / "cache")
    with pytest.raises(PipelineError, match="run the augment stage first"):
        OfflineCacheDataset(tmp_path / "missing")


def test_images_of_changing_size_are_refused_and_the_old_cache_kept(tmp_path):
    write_disabled(tmp_path / "cache")
    varying = build_transform([{"Crop": {"px": [0, 3], "keep_size": False}}], task="segmentation")
    with pytest.raises(PipelineError, match="one fixed output size"):
        write_cache(
            tmp_path / "cache", Base(6, "segmentation"), varying, task="segmentation", copies=3, shard_size=4, seed=0
        )
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temporary left behind
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["enabled"] is False
