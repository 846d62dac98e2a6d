"""The decoded cache on real generated PNGs: the samples equal ManifestDataset's byte for byte (both
tasks, with and without a transform, through DataLoader workers), a parallel write equals a serial
one, a cache of another manifest or size is refused naming `dvc repro decode`, and a failed write
leaves the previous cache whole."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.augment.device_augment import DeviceAugment
from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.data import decoded
from pipeline.data.dataset import ManifestDataset
from pipeline.data.decoded import DecodedDataset, open_split, write_decoded
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_classification, generate_segmentation

SIZE = [16, 20]  # from 32 px sources: both resizes (bilinear images, nearest masks) happen
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def manifest_of(root: Path, task: str = "segmentation", seed: int = 0) -> Manifest:
    if not root.exists():
        if task == "segmentation":
            generate_segmentation(root, n=15, size=32, seed=2)
        else:
            generate_classification(root, n_per_class=5, size=32, seed=2)
    return Manifest(
        **build_manifest(
            root,
            task=task,
            root_as_written=str(root),
            num_classes=None,
            seed=seed,
            fractions=FRACTIONS,
            stratify=task == "classification",
        )
    )


def both(tmp_path: Path, task: str, split: str, **kwargs) -> tuple[ManifestDataset, DecodedDataset]:
    data, cache = tmp_path / "data", tmp_path / "decode"
    manifest = manifest_of(data, task)
    if not cache.exists():
        write_decoded(cache, manifest, root=data, image_size=SIZE)
    return (
        ManifestDataset(manifest, split, root=data, image_size=SIZE, **kwargs),
        DecodedDataset(cache, manifest, split, root=data, image_size=SIZE, **kwargs),
    )


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_samples_are_byte_identical_to_manifest_dataset(tmp_path, task):
    for split in ("train", "val"):
        files, cached = both(tmp_path, task, split)
        assert len(files) == len(cached) > 0
        for i in range(len(files)):
            (image_a, target_a), (image_b, target_b) = files[i], cached[i]
            assert image_b.dtype == torch.uint8 and image_b.shape == (3, *SIZE) and image_b.is_contiguous()
            assert target_a.dtype == target_b.dtype and target_a.shape == target_b.shape
            assert torch.equal(image_a, image_b) and torch.equal(target_a, target_b)
            (array_a, mask_a), (array_b, mask_b) = files.load(i), cached.load(i)
            assert array_b.shape == (*SIZE, 3) and array_b.flags.writeable and array_b.flags.c_contiguous
            assert np.array_equal(array_a, array_b)
            assert (mask_a is None and mask_b is None) or (np.array_equal(mask_a, mask_b) and mask_b.flags.writeable)
        assert torch.equal(files[-1][0], cached[-1][0])
        with pytest.raises(IndexError):
            cached[len(cached)]
    if task == "segmentation":  # the masks hold class indices, not 0/255
        assert set(torch.unique(cached[0][1]).tolist()) <= {0, 1}


def test_a_transform_sees_the_same_arrays_and_gives_the_same_samples(tmp_path):
    spec = [{"Fliplr": {"p": 1.0}}, {"Affine": {"translate_px": {"x": 2}}}]  # deterministic, geometric
    files, cached = both(tmp_path, "segmentation", "train", transform=build_transform(spec, task="segmentation"))
    for i in range(len(files)):
        assert all(torch.equal(a, b) for a, b in zip(files[i], cached[i]))
    files, cached = both(tmp_path, "segmentation", "val", transform=build_transform([], task="segmentation"))
    assert all(torch.equal(a, b) for i in range(len(files)) for a, b in zip(files[i], cached[i]))


def test_the_batch_transform_is_carried_and_reseeded_the_same_way(tmp_path):
    spec = [{"Fliplr": {"p": 0.5}}]
    files, cached = both(tmp_path, "segmentation", "train", batch_transform=DeviceAugment(spec, task="segmentation"))
    batches = []
    for dataset in (files, cached):
        torch.manual_seed(7)
        dataset.set_epoch(3)
        assert dataset.batch_transform.epoch_seed == 7
        images = torch.stack([dataset[i][0] for i in range(4)])
        masks = torch.stack([dataset[i][1] for i in range(4)])
        batches.append(dataset.batch_transform(images, masks))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_dataloader_workers_open_the_shards_themselves(tmp_path):
    files, cached = both(tmp_path, "segmentation", "train")
    cached[0]  # maps the shards here; a pickled copy must not carry them
    assert pickle.loads(pickle.dumps(cached))._arrays is None
    loader = torch.utils.data.DataLoader(cached, batch_size=4, num_workers=2)
    reference = torch.utils.data.DataLoader(files, batch_size=4)
    for (a, b), (c, d) in zip(loader, reference, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_a_parallel_write_equals_a_serial_one(tmp_path):
    data = tmp_path / "data"
    manifest = manifest_of(data)
    serial = write_decoded(tmp_path / "one", manifest, root=data, image_size=SIZE, workers=1)
    parallel = write_decoded(tmp_path / "two", manifest, root=data, image_size=SIZE, workers=2)
    assert serial == parallel
    names = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(names) == 5  # index + two shard files per split
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_the_index_records_what_the_cache_was_built_from(tmp_path):
    data = tmp_path / "data"
    manifest = manifest_of(data)
    index = write_decoded(tmp_path / "decode", manifest, root=data, image_size=SIZE)
    assert index["manifest_fingerprint"] == manifest.fingerprint and index["image_size"] == SIZE
    assert index["task"] == "segmentation" and set(index["splits"]) == {"train", "val"}  # no test split
    assert {s: v["count"] for s, v in index["splits"].items()} == {s: len(manifest.splits[s]) for s in ("train", "val")}
    assert index["bytes"] == decoded.cache_bytes(manifest, SIZE) == 12 * 16 * 20 * 4
    shard = index["splits"]["train"]["shards"][0]
    images = np.load(tmp_path / "decode/train" / shard["images"], mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape == (9, 3, *SIZE)


def test_a_cache_of_another_manifest_or_size_is_refused(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "decode"
    manifest = manifest_of(data)
    write_decoded(cache, manifest, root=data, image_size=SIZE)
    resplit = manifest_of(data, seed=1)  # the same files (same fingerprint), dealt differently
    assert resplit.fingerprint == manifest.fingerprint and resplit.splits != manifest.splits
    cases = {
        "image size": (manifest, [16, 16]),
        "split entries": (resplit, SIZE),
        "data fingerprint": (dataclasses.replace(manifest, fingerprint="0" * 64), SIZE),
        "classes": (dataclasses.replace(manifest, num_classes=3), SIZE),
    }
    for what, (other, size) in cases.items():
        with pytest.raises(PipelineError, match=f"{what}.*dvc repro decode"):
            DecodedDataset(cache, other, "train", root=data, image_size=size)
        with pytest.raises(PipelineError, match="dvc repro decode"):  # what training calls
            open_split(cache, other, "val", root=data, image_size=size)


def test_open_split_uses_the_cache_only_when_there_is_one(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "decode"
    manifest = manifest_of(data)
    missing = open_split(cache, manifest, "train", root=data, image_size=SIZE)
    assert type(missing) is ManifestDataset and "dvc repro decode" in capsys.readouterr().err
    decoded.write_disabled(cache)
    assert type(open_split(cache, manifest, "train", root=data, image_size=SIZE)) is ManifestDataset
    with pytest.raises(PipelineError, match=r"data\.cache was none"):
        DecodedDataset(cache, manifest, "train", root=data, image_size=SIZE)
    write_decoded(cache, manifest, root=data, image_size=SIZE)
    assert type(open_split(cache, manifest, "train", root=data, image_size=SIZE)) is DecodedDataset


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_write_leaves_the_previous_cache_whole(tmp_path, workers):
    data, cache = tmp_path / "data", tmp_path / "decode"
    manifest = manifest_of(data)
    write_decoded(cache, manifest, root=data, image_size=SIZE)
    before = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    broken = data / manifest.splits["val"][-1]["image"]  # the last sample written: everything else was
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(PipelineError, match=broken.name):
        write_decoded(cache, manifest, root=data, image_size=[8, 8], workers=workers)
    assert {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["data", "decode"]  # no temporary folder left behind


def test_a_disk_too_small_is_refused_before_writing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    manifest = manifest_of(data)
    monkeypatch.setattr(decoded.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))  # a full disk
    with pytest.raises(PipelineError, match=r"needs 15\.4 KB but only 1\.0 KB are free.*data\.cache: none"):
        write_decoded(tmp_path / "decode", manifest, root=data, image_size=SIZE)
    assert not (tmp_path / "decode").exists()
