"""How batches reach the step: persistent workers with per-sample seeds, the device feed and its
data-wait clock, the background checkpoint writer, fused optimizers and the worker count."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset

from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_segmentation
from pipeline.torchfile import load as load_torch_file
from pipeline.training import checkpoint
from pipeline.training.feed import DeviceFeed
from pipeline.training.inputs import make_loader
from pipeline.training.optimizer import fast_defaults
from pipeline.training.threads import resolve_workers

CPU = torch.device("cpu")
AUGMENT = [{"Fliplr": {"p": 0.5}}, {"Affine": {"rotate": [-30, 30]}}, {"GaussianBlur": {"sigma": [0.0, 1.0]}}]


@pytest.fixture(scope="module")
def augmented(tmp_path_factory: pytest.TempPathFactory) -> ManifestDataset:
    root = tmp_path_factory.mktemp("feed") / "data"
    generate_segmentation(root, n=16, size=16, seed=0)
    manifest = Manifest(
        **build_manifest(
            root,
            task="segmentation",
            root_as_written=str(root),
            num_classes=None,
            seed=0,
            fractions={"train": 0.75, "val": 0.125, "test": 0.125},
            stratify=True,
        )
    )
    return ManifestDataset(
        manifest, "train", root=root, image_size=[16, 16], transform=build_transform(AUGMENT, task="segmentation")
    )


def epochs_of(dataset: Dataset, *, workers: int, seeds: list[int]) -> list[list[torch.Tensor]]:
    loader = make_loader(dataset, {"workers": workers, "batch_size": 4}, CPU, shuffle=True, generator=torch.Generator())
    batches = []
    for epoch, seed in enumerate(seeds):
        loader.generator.manual_seed(seed)
        loader.sampler.set_epoch(epoch, seed)
        batches.append([images for images, _ in loader])
    return batches


def test_a_samples_augmentation_depends_on_its_seed_and_index_only(augmented):
    """Two persistent workers draw exactly what the main process draws alone, epoch by epoch: which
    worker loads a sample, and what it loaded before, no longer matter (so a resume replays)."""
    alone = epochs_of(augmented, workers=0, seeds=[11, 12])
    pooled = epochs_of(augmented, workers=2, seeds=[11, 12])
    for a, b in zip(alone, pooled):
        assert len(a) == len(b) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(*alone))  # epochs differ
    assert epochs_of(augmented, workers=2, seeds=[12])[0][0].equal(alone[1][0])  # epoch 1 alone: a resume


class Pids(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(os.getpid()), torch.tensor(index)


def test_workers_persist_across_epochs_for_training_and_validation():
    for shuffle in (True, False):
        loader = make_loader(
            Pids(),
            {"workers": 2, "batch_size": 2},
            CPU,
            shuffle=shuffle,
            generator=torch.Generator() if shuffle else None,
        )
        pids = []
        for epoch in range(3):
            if shuffle:
                loader.sampler.set_epoch(epoch, epoch)
            pids.append({int(p) for batch, _ in loader for p in batch})
        assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]


class Slow(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.02)
        return torch.full((3, 2, 2), index, dtype=torch.uint8), torch.tensor(index)


def test_the_device_feed_passes_batches_through_and_clocks_the_wait():
    loader = torch.utils.data.DataLoader(Slow(), batch_size=2)
    feed = DeviceFeed(loader, CPU)
    got = [targets.tolist() for _, targets in feed]
    assert got == [[0, 1], [2, 3], [4, 5]] and len(feed) == 3
    assert 0.10 <= feed.wait_s < 1.0  # six samples of 20 ms, all waited for by the loop
    assert [t.tolist() for _, t in feed] == got and feed.wait_s < 1.0  # restarts at zero each pass
    assert list(DeviceFeed([], CPU)) == []


def test_the_checkpoint_is_written_in_the_background_from_a_snapshot(tmp_path: Path):
    weights = torch.zeros(3)
    writer = checkpoint.BackgroundWriter()
    writer.save(tmp_path / "last.pt", {"model": {"w": weights}, "history": [{"epoch": 1}], "epoch": 0})
    weights += 5  # training goes on while the file is written
    writer.wait()
    state = load_torch_file(tmp_path / "last.pt")
    assert torch.equal(state["model"]["w"], torch.zeros(3)) and state["history"] == [{"epoch": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left

    (tmp_path / "blocked").write_text("a file where the folder should be")
    writer.save(tmp_path / "blocked" / "last.pt", {"epoch": 1})
    with pytest.raises(PipelineError, match="could not write the checkpoint"):
        writer.wait()
    writer.wait()  # the error is raised once


def test_fused_kernels_are_the_default_on_cuda_only():
    on_cuda = [{"params": [SimpleNamespace(is_cuda=True)]}]
    on_cpu = [{"params": [torch.zeros(1, requires_grad=True)]}]
    assert fast_defaults(torch.optim.AdamW, {}, on_cuda) == {"fused": True}
    assert fast_defaults(torch.optim.SGD, {}, on_cuda) == {"fused": True}
    assert fast_defaults(torch.optim.AdamW, {}, on_cpu) == {}
    assert fast_defaults(torch.optim.AdamW, {"foreach": True}, on_cuda) == {}  # the user's choice stands
    assert fast_defaults(torch.optim.AdamW, {"fused": False}, on_cuda) == {}
    assert fast_defaults(torch.optim.LBFGS, {}, on_cuda) == {}  # no fused kernel


def test_auto_workers_follow_the_cores():
    assert resolve_workers("auto", cores=2, local_processes=1) == 2
    assert resolve_workers("auto", cores=64, local_processes=1) == 16
    assert resolve_workers("auto", cores=16, local_processes=8) == 2
    assert resolve_workers("auto", cores=1, local_processes=4) == 1
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3


def test_samples_without_a_per_sample_transform_are_not_seeded(augmented):
    """With augmentation on the device (or the offline cache) a worker draws nothing per sample:
    seeding would only add its cost to a read from the decoded cache."""
    import copy

    import numpy as np

    from pipeline.training.feed import SeededSamples

    plain = copy.copy(augmented)
    plain.transform = None
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    SeededSamples(plain)[(0, 5, 0)]
    assert np.random.random() == expected  # the global RNG was not reseeded
    seeded = SeededSamples(augmented)
    np.random.seed(123)
    seeded[(0, 5, 0)]
    assert np.random.random() != expected
