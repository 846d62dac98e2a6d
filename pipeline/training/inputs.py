"""What training reads: the training set (augmented online, or the augment stage's offline cache), the
validation set, and the DataLoaders over them as the ``train`` section asks. Online augmentation runs
per sample in the DataLoader workers, or per batch on the training device (``augment.device``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline import outputs
from pipeline.augment.cache import OfflineCacheDataset
from pipeline.augment.device_augment import DeviceAugment
from pipeline.augment.device_support import resolve_where
from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset
from pipeline.data.decoded import open_split
from pipeline.data.manifest import Manifest
from pipeline.models.input_contract import resolve_device
from pipeline.processes import dying_with_parent
from pipeline.seeding import worker_init_fn
from pipeline.training.feed import SeededSamples, epoch_keys
from pipeline.training.threads import resolve_workers


def make_loader(
    dataset: Any,
    cfg: dict[str, Any],
    device: torch.device,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    sampler: Any = None,
) -> DataLoader:
    """A DataLoader as the ``train`` section asks. Its workers persist for the whole run (no fork per
    epoch). The training loader (``shuffle``: shuffled, a ragged last batch dropped) reads
    :class:`~pipeline.training.feed.EpochKeys` through :class:`~pipeline.training.feed.SeededSamples`:
    call ``loader.sampler.set_epoch(epoch, seed)`` before each epoch. Its workers die with this process
    (:func:`pipeline.processes.die_with_parent`), even when it is killed."""
    workers = resolve_workers(cfg["workers"])
    share = len(sampler) if sampler is not None else len(dataset)  # this rank's samples
    if shuffle:
        sampler = epoch_keys(dataset, shuffle=True, sampler=sampler)
        dataset = SeededSamples(dataset)
    return DataLoader(
        dataset,
        batch_size=cfg["batch_size"],
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=dying_with_parent(worker_init_fn) if workers else None,
        generator=generator,
        pin_memory=device.type == "cuda",
        drop_last=shuffle and share > cfg["batch_size"],
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
    )


def datasets(view: ParamsView, manifest: Manifest) -> tuple[ManifestDataset | OfflineCacheDataset, ManifestDataset]:
    """The training set (augmented online, or the augment stage's offline cache) and the validation set,
    read from the decode stage's cache when there is one (:func:`pipeline.data.decoded.open_split`)."""
    task, root = view["data.task"], view.root
    image_size, data_root = view["data.image_size"], view.resolve_path(manifest.root)
    resize = view["data.resize"]  # none: random crops of image_size to train, whole images to validate
    train_set: ManifestDataset | OfflineCacheDataset
    if view["augment.offline"]["enabled"]:
        train_set = OfflineCacheDataset(root / outputs.AUGMENT_CACHE)
        if train_set.index.get("manifest_fingerprint") != manifest.fingerprint:
            raise PipelineError(
                f"{root / outputs.AUGMENT_CACHE} was built from another split; re-run the "
                "augment stage (dvc repro augment)"
            )
    else:
        spec, random_order = view["augment.train"], view["augment.random_order"]
        on_device = augment_where(view) == "device"
        train_set = open_split(  # the decode stage's cache (data.cache), else the files
            root / outputs.DECODE,
            manifest,
            "train",
            root=data_root,
            image_size=image_size,
            transform=None if on_device else build_transform(spec, task=task, random_order=random_order),
            batch_transform=DeviceAugment(spec, task=task, random_order=random_order) if on_device else None,
            resize=resize,
            crop=view["data.crop"],
            max_side=view["data.max_side"],
        )
    val_set = open_split(
        root / outputs.DECODE,
        manifest,
        "val",
        root=data_root,
        image_size=image_size,
        transform=build_transform(view["augment.eval"], task=task),
        resize=resize,
        max_side=view["data.max_side"],
    )
    if len(train_set) == 0 or len(val_set) == 0:
        raise PipelineError("the train or validation split is empty; adjust split.fractions")
    return train_set, val_set


def augment_where(view: ParamsView) -> str:
    """Where the training augmentation runs (``augment.device`` for this run's train.device): ``device``
    (per batch, :func:`augment_batch`) or ``cpu`` (per sample, in the DataLoader workers)."""
    device_type = resolve_device(view["train"]["device"], key="train.device").type
    return resolve_where(
        view["augment.device"],
        view["augment.train"],
        task=view["data.task"],
        random_order=view["augment.random_order"],
        device_type=device_type,
        offline=view["augment.offline"]["enabled"],
    )


def augment_batch(
    dataset: Any, images: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch, augmented on ``device`` when the training set augments per batch (float images
    0-255 and targets, both on ``device``); otherwise as the loader gave it (the step moves it)."""
    augment = getattr(dataset, "batch_transform", None)
    if augment is None:
        return images, targets
    cuda = device.type == "cuda"
    return augment(images.to(device, non_blocking=cuda), targets.to(device, non_blocking=cuda))
