"""What training reads: the training set (augmented online, or the augment stage's offline cache), the
validation set, and the DataLoaders over them as the ``train`` section asks."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline import outputs
from pipeline.augment.cache import OfflineCacheDataset
from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest
from pipeline.seeding import worker_init_fn


def make_loader(dataset: Any, cfg: dict[str, Any], device: torch.device, *, shuffle: bool,
                generator: torch.Generator | None = None, sampler: Any = None) -> DataLoader:
    """A DataLoader as the ``train`` section asks (shuffled and dropping a ragged last batch: training)."""
    workers = cfg["workers"]
    share = len(sampler) if sampler is not None else len(dataset)  # this rank's samples
    return DataLoader(
        dataset, batch_size=cfg["batch_size"], shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, worker_init_fn=worker_init_fn if workers else None, generator=generator,
        pin_memory=device.type == "cuda", drop_last=shuffle and share > cfg["batch_size"],
        prefetch_factor=4 if workers else None)


def datasets(view: ParamsView, manifest: Manifest) -> tuple[ManifestDataset | OfflineCacheDataset,
                                                              ManifestDataset]:
    """The training set (augmented online, or the augment stage's offline cache) and the validation set."""
    task, root = view["data.task"], view.root
    image_size, data_root = view["data.image_size"], view.resolve_path(manifest.root)
    train_set: ManifestDataset | OfflineCacheDataset
    if view["augment.offline"]["enabled"]:
        train_set = OfflineCacheDataset(root / outputs.AUGMENT_CACHE)
        if train_set.index.get("manifest_fingerprint") != manifest.fingerprint:
            raise PipelineError(f"{root / outputs.AUGMENT_CACHE} was built from another split; re-run the "
                                "augment stage (dvc repro augment)")
    else:
        train_set = ManifestDataset(manifest, "train", root=data_root, image_size=image_size,
                                    transform=build_transform(view["augment.train"], task=task,
                                                              random_order=view["augment.random_order"]))
    val_set = ManifestDataset(manifest, "val", root=data_root, image_size=image_size,
                              transform=build_transform(view["augment.eval"], task=task))
    if len(train_set) == 0 or len(val_set) == 0:
        raise PipelineError("the train or validation split is empty; adjust split.fractions")
    return train_set, val_set
