"""How samples reach the training step: workers that live for the whole run, per-sample seeds that make
an epoch's augmentation a function of (train.seed, epoch, sample) alone, and batches copied to the GPU on
a side stream while the previous one trains, with the time the loop waits for them measured.

Why per-sample seeds: DataLoader workers that persist across epochs (no fork per epoch for training and
validation) keep their RNG state from epoch to epoch, so reseeding them once per epoch, as a fresh fork
did, is no longer possible from the main process. Instead the sampler sends ``(epoch, seed, index)``
keys, and the worker seeds Python's, numpy's, torch's and imgaug's global RNGs from ``(seed, index)``
before it loads the sample: the augmentation of a sample no longer depends on which worker loads it or
on what that worker loaded before, so a run resumed at epoch k draws exactly what the uninterrupted run
drew. (Augmenters with a private RNG, Rain and Snowflakes, are reset once per epoch in each worker and
then follow that worker's samples: repeatable for a given worker count, as before.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from pipeline.seeding import epoch_seed, seed_everything, seed_sample
from pipeline.training import distributed as dist

if TYPE_CHECKING:
    from pipeline.augment.cache import OfflineCacheDataset
    from pipeline.data.dataset import ManifestDataset
    from pipeline.training.sampling import WeightedDraw


class EpochKeys(Sampler[tuple[int, int, int]]):
    """Yields ``(epoch, seed, index)`` keys; :meth:`set_epoch` before each epoch. The indices come from
    ``base`` (DDP's share, which shuffles itself) or are ``range(length)``, shuffled when ``shuffle`` by a
    permutation drawn from the epoch's seed alone: a persistent loader draws nothing between epochs
    (a fresh one draws its workers' base seed first), so the order must not depend on its generator."""

    def __init__(self, base: Sampler[int] | None = None, *, length: int = 0, shuffle: bool = False):
        self.base, self.length, self.shuffle = base, length, shuffle
        self.epoch, self.seed = 0, 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def _indices(self) -> Iterator[int]:
        if self.base is not None:
            return iter(self.base)
        if not self.shuffle:
            return iter(range(self.length))
        return iter(torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed)).tolist())

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for index in self._indices():
            yield self.epoch, self.seed, int(index)

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.length  # type: ignore[arg-type]


def epoch_keys(dataset: Sized, *, shuffle: bool, sampler: Sampler[int] | None) -> EpochKeys:
    """The keys over ``sampler`` (DDP's share) or over the whole dataset, shuffled per epoch when asked."""
    return EpochKeys(sampler) if sampler is not None else EpochKeys(length=len(dataset), shuffle=shuffle)


class SeededSamples(Dataset):
    """``dataset`` read by :class:`EpochKeys`: every sample loads after the global RNGs were seeded from
    its (epoch seed, index). In a worker process the dataset's ``set_epoch`` runs when a new epoch's first
    key arrives (the training loop calls it itself in the main process). Picklable when ``dataset`` is."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._epoch: int | None = None
        # Only a per-sample transform draws randomness here; without one (augmentation on the device,
        # the offline cache) seeding would only add its 18 us to a sample the decoded cache reads in 11.
        # Random crops (data.resize none) draw too.
        self._seeded = getattr(dataset, "transform", None) is not None or getattr(dataset, "crop", None) is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        epoch, seed, index = key
        if epoch != self._epoch:
            if get_worker_info() is not None and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self._epoch = epoch
        if self._seeded:
            seed_sample(seed, index)
        return self.dataset[index]


class DeviceFeed:
    """Iterates ``loader`` yielding ``(images, targets)`` already on ``device``. On CUDA the next batch is
    copied on a side stream (from pinned memory) while the current one trains, and the compute stream
    waits for it only when it uses it; elsewhere batches pass through as the loader gives them (the
    step moves them). ``wait_s`` is the host time spent waiting for the loader this pass: the share of
    the epoch a user sees as ``data_wait`` in the history."""

    def __init__(self, loader: Any, device: torch.device):
        self.loader, self.device = loader, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def _next(self, batches: Iterator[Any]) -> Any:
        started = time.perf_counter()
        try:
            return next(batches)
        finally:
            self.wait_s += time.perf_counter() - started

    def _copy(self, batch: Any) -> Any:
        if self.stream is None:
            return batch
        with torch.cuda.stream(self.stream):
            return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def __iter__(self) -> Iterator[Any]:
        self.wait_s = 0.0
        batches = iter(self.loader)
        try:
            ahead = self._copy(self._next(batches))
        except StopIteration:
            return
        while True:
            current = ahead
            if self.stream is not None:
                compute = torch.cuda.current_stream(self.device)
                compute.wait_stream(self.stream)  # the copy of ``current`` is done before it is used
                for tensor in current:
                    tensor.record_stream(compute)  # its memory is not reused while compute reads it
            yield current  # the step is launched (asynchronously) before the next batch is fetched...
            try:
                ahead = self._copy(self._next(batches))  # ...so this copy overlaps its compute
            except StopIteration:
                return


@dataclass
class TrainData:
    """The training set as the loop reads it: the dataset, its loader (over :class:`EpochKeys`), the feed
    that brings the batches to the device, and :meth:`start_epoch`, the one call that seeds an epoch."""

    dataset: ManifestDataset | OfflineCacheDataset
    loader: DataLoader
    feed: DeviceFeed  # ``loader``'s batches on the device, copied ahead
    generator: torch.Generator  # ``loader``'s
    shard: DistributedSampler | WeightedDraw | None  # this rank's share of the epoch (DDP, or train.sampler)
    seed: int  # train.seed
    ctx: dist.Context

    def start_epoch(self, epoch: int) -> None:
        """Seed everything epoch ``epoch`` draws from (train.seed, epoch, rank) alone, so a run resumed at
        ``epoch`` draws what the uninterrupted run drew. Ranks add their rank to the seed, so their
        augmentations (and dropout) differ; rank 0 alone is exactly a single-process run."""
        seed = epoch_seed(self.seed, epoch) + self.ctx.rank
        seed_everything(seed)  # dropout, and the augmentation run in this process (device, no workers)
        self.generator.manual_seed(seed)
        if self.shard is not None:
            self.shard.set_epoch(epoch)  # a new shuffle (or weighted draw) every epoch, the same on every rank
            dist.write_debug_samples(self.shard, self.ctx, epoch)
        self.dataset.set_epoch(epoch)  # device augmentation reseeds from torch's seed; the cache picks a copy
        keys = self.loader.sampler
        assert isinstance(keys, EpochKeys), "a training loader from pipeline.training.inputs.make_loader"
        keys.set_epoch(epoch, seed)  # the workers seed each sample from (seed, index)
