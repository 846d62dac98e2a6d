"""ManifestDataset.set_epoch: what the training loop calls at the start of every epoch, after the global
RNGs were reseeded from (train.seed, epoch). Augmenters with a private RNG (Snowflakes, Rain) replay
an epoch only because set_epoch resets the transform; global-RNG augmenters replay either way."""

from __future__ import annotations

import pytest
import torch

from pipeline.augment.transform import build_transform
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_segmentation
from pipeline.seeding import seed_everything


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("epochs") / "data"
    generate_segmentation(root, n=8, size=16, seed=0)
    return Manifest(
        **build_manifest(
            root,
            task="segmentation",
            root_as_written=str(root),
            num_classes=None,
            seed=0,
            fractions={"train": 0.5, "val": 0.25, "test": 0.25},
            stratify=True,
        )
    )


def first_image_after_reseed(dataset: ManifestDataset, *, set_epoch: int | None) -> torch.Tensor:
    """Reseed as the loop does (optionally calling set_epoch), read sample 0, then draw once more so
    any private RNG moves on."""
    seed_everything(3)
    if set_epoch is not None:
        dataset.set_epoch(set_epoch)
    image = dataset[0][0]
    dataset[1]
    return image


@pytest.mark.parametrize("augmenter", ["Snowflakes", "Rain"])
def test_set_epoch_makes_private_rng_augmenters_follow_the_seed(manifest, augmenter):
    dataset = ManifestDataset(
        manifest,
        "train",
        root=manifest.root,
        image_size=[16, 16],
        transform=build_transform([{augmenter: {}}], task="segmentation"),
    )
    first = first_image_after_reseed(dataset, set_epoch=0)
    assert torch.equal(first_image_after_reseed(dataset, set_epoch=1), first)  # replayed
    assert not torch.equal(first_image_after_reseed(dataset, set_epoch=None), first)  # without: it drifts


def test_set_epoch_without_a_resettable_transform_changes_nothing(manifest):
    plain = ManifestDataset(manifest, "train", root=manifest.root, image_size=[16, 16])
    flip = ManifestDataset(
        manifest,
        "train",
        root=manifest.root,
        image_size=[16, 16],
        transform=lambda image, mask: (image[:, ::-1], mask[:, ::-1]),
    )
    for dataset in (plain, flip):
        before = dataset[0][0]
        dataset.set_epoch(5)
        assert torch.equal(dataset[0][0], before)
    assert torch.equal(flip[0][0], plain[0][0].flip(-1))
