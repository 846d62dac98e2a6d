"""A split of the manifest as a torch Dataset: images and masks decoded lazily from disk (upright, and
images by their real range: ``pipeline.data.images``), resized to ``data.image_size`` (``data.resize:
fit``) or kept at native resolution (``none``: the training split then yields random crops of
``data.image_size``, :func:`random_crop`), augmented by the declared transform. Images are returned as
uint8 tensors: normalisation happens on the device, later."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.files import mask_array, mask_to_classes
from pipeline.data.images import open_image, to_rgb
from pipeline.data.manifest import Manifest

# (image HxWx3 uint8, mask HxW uint8 or None) -> (image, mask): built by the augmentation helper.
Transform = Callable[[np.ndarray, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray | None]"]
# (images uint8 [N,3,H,W], targets) on the training device -> (float images 0-255, targets): a whole
# batch augmented where the model runs (pipeline.augment.device_augment.DeviceAugment); has set_epoch(seed).
BatchTransform = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class Samples(Protocol):
    """Un-augmented ``(image uint8 [3,H,W], target)`` by index: a :class:`ManifestDataset` or a list."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def rgb_resized(image: Image.Image, hw: tuple[int, int], where: str | Path = "image") -> np.ndarray:
    """The image as the model sees it before augmentation: 8-bit RGB by its real range (16-bit and float
    images scaled, not clipped: ``images.to_rgb``), resized bilinearly to (height, width), HxWx3 uint8
    and writable. Training, evaluation and predict all prepare images here; ``where`` names it in errors."""
    image = to_rgb(image, where)
    if image.size != (hw[1], hw[0]):
        image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)


def random_crop(
    image: np.ndarray, mask: np.ndarray, hw: tuple[int, int], foreground_prob: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A crop of ``hw`` from a full-resolution image and its mask (both reflected at the far edges first
    when smaller). With probability ``foreground_prob`` it is centred (as far as the edges allow) on a
    random foreground pixel (class > 0), else placed uniformly. Draws from numpy's global RNG, which
    :func:`pipeline.seeding.seed_sample` seeds per (epoch, sample): a resumed run draws the same crops."""
    height, width = hw
    pad = ((0, max(0, height - image.shape[0])), (0, max(0, width - image.shape[1])))
    if any(p for _, p in pad):
        image, mask = np.pad(image, (*pad, (0, 0)), mode="reflect"), np.pad(mask, pad, mode="reflect")
    rows, cols = mask.shape
    y = x = None
    if foreground_prob > 0 and np.random.random() < foreground_prob:
        ys, xs = np.nonzero(mask)
        if len(ys):
            pick = np.random.randint(len(ys))
            y = int(np.clip(ys[pick] - height // 2, 0, rows - height))
            x = int(np.clip(xs[pick] - width // 2, 0, cols - width))
    if y is None or x is None:
        y, x = np.random.randint(rows - height + 1), np.random.randint(cols - width + 1)
    return np.array(image[y : y + height, x : x + width]), np.array(mask[y : y + height, x : x + width])


def native_hw(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The (height, width) an image of ``hw`` is kept at with ``data.resize: none``: its own, or, when its
    longer side exceeds ``data.max_side``, scaled down (aspect kept) so that side is ``max_side``."""
    height, width = hw
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def rgb_native(image: Image.Image, where: str | Path = "image", max_side: int | None = None) -> np.ndarray:
    """The image at its own size (``data.resize: none``; shrunk bilinearly to ``max_side`` when larger:
    :func:`native_hw`) as 8-bit RGB, HxWx3 uint8 and writable. Training, evaluation and predict all keep
    native images here."""
    image = to_rgb(image, where)
    height, width = native_hw((image.height, image.width), max_side)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)


def chw_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> a contiguous uint8 [3,H,W] tensor (a copy: a transform may return a strided or
    read-only view)."""
    return torch.from_numpy(np.array(image.transpose(2, 0, 1), dtype=np.uint8, order="C"))


def stored_target(task: str, entry: dict, num_classes: int) -> int | np.ndarray:
    """An image-level target as the caches store it: a class index, or (multilabel) the multi-hot
    uint8 vector [C] of the classes listed in ``entry["labels"]``."""
    if task == "multilabel":
        hot = np.zeros(num_classes, dtype=np.uint8)
        hot[list(entry["labels"])] = 1
        return hot
    return int(entry["label"])


def target_tensor(task: str, stored: object) -> torch.Tensor:
    """A stored target as a sample's tensor: a mask uint8 [H,W], a class index int64 [], or a
    multilabel float32 [C] (0/1, what the BCE-type losses take; batches stack to [N,C])."""
    if task == "segmentation":
        return torch.from_numpy(np.array(stored, dtype=np.uint8, order="C"))
    if task == "multilabel":
        return torch.from_numpy(np.array(stored, dtype=np.float32))
    return torch.tensor(int(stored), dtype=torch.int64)  # type: ignore[call-overload]


def image_hw(image_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """``data.image_size`` (one number or [height, width]) as (height, width)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


class ManifestDataset(torch.utils.data.Dataset):
    """One split of a manifest as ``(image uint8 [3,H,W], target)``, decoded lazily from disk.

    target: segmentation a uint8 [H,W] tensor of class indices, classification an int64 scalar,
    multilabel a float32 [C] multi-hot vector.
    Images are resized bilinearly, masks with NEAREST (class indices must not blend), then
    ``transform(image, mask)`` runs on HxWx3 / HxW uint8 arrays. Picklable (DataLoader workers).
    ``batch_transform``, when given, is the training loop's to apply to each batch on the device
    (augment.device); the samples themselves then leave here unaugmented.

    ``resize`` ``none`` (segmentation): images and masks keep their native size; with ``crop`` (the
    training split's ``data.crop``) each sample is a random crop of ``image_size`` before the transform,
    without it (validation, test) the whole image, each of its own size (batches of one)."""

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        *,
        root: str | Path,
        image_size: int | list[int] | tuple[int, int],
        transform: Transform | None = None,
        batch_transform: BatchTransform | None = None,
        resize: str = "fit",
        crop: dict[str, Any] | None = None,
        max_side: int | None = None,
    ):
        if split not in manifest.splits:
            raise PipelineError(f"no split {split!r} in the manifest (splits: {', '.join(manifest.splits)})")
        self.task = manifest.task
        self.num_classes = manifest.num_classes
        self.class_names = list(manifest.class_names)
        self.entries = list(manifest.splits[split])
        self.root = Path(root)
        self.height, self.width = image_hw(image_size)
        self.transform = transform
        self.batch_transform = batch_transform
        self.native = resize == "none"
        if self.native and self.task != "segmentation":
            raise PipelineError("data.resize none (native resolution) is for segmentation; use fit")
        self.crop = crop if self.native else None
        self.max_side = max_side if self.native else None  # data.max_side: native images shrunk to it

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch, after the global RNGs were reseeded: the transform draws
        from them, and its augmenters with a private RNG (Rain, Snowflakes) are reset to follow them too.
        The epoch number itself is not needed (``OfflineCacheDataset.set_epoch`` picks a copy by it).
        The batch transform is reseeded from torch's seed, which the loop has just set from (train.seed,
        epoch, rank): a resumed run draws the same batches."""
        del epoch
        if self.transform is not None and hasattr(self.transform, "reset"):
            self.transform.reset()
        if self.batch_transform is not None and hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(torch.initial_seed())

    def _open(self, rel: str) -> Image.Image:
        """Image or mask ``rel``, decoded and upright (EXIF orientation: ``images.open_image``)."""
        return open_image(self.root / rel)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Sample ``index`` resized, not transformed: (image HxWx3 uint8, class-index mask HxW or None),
        both writable (a transform may work in place)."""
        entry = self.entries[index]
        image = self._open(entry["image"])
        mask = None
        if self.task == "segmentation":
            mask_image = self._open(entry["mask"])
            if mask_image.size != image.size:
                raise PipelineError(
                    f"{self.root / entry['mask']}: mask is {mask_image.size[0]}x{mask_image.size[1]}"
                    f" but its image {entry['image']} is {image.size[0]}x{image.size[1]}"
                )
            classes = mask_to_classes(mask_array(mask_image, str(self.root / entry["mask"])), self.num_classes)
            if self.native:
                array = rgb_native(image, self.root / entry["image"], self.max_side)
                if array.shape[:2] != classes.shape:  # shrunk to data.max_side: the mask with it (nearest)
                    shrunk = Image.fromarray(classes).resize((array.shape[1], array.shape[0]), Image.Resampling.NEAREST)
                    classes = np.asarray(shrunk)
                return array, np.array(classes, dtype=np.uint8)
            mask_image = Image.fromarray(classes)
            if mask_image.size != (self.width, self.height):
                mask_image = mask_image.resize((self.width, self.height), Image.Resampling.NEAREST)
            mask = np.array(mask_image, dtype=np.uint8)
        return rgb_resized(image, (self.height, self.width), self.root / entry["image"]), mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.crop is not None and mask is not None:
            image, mask = random_crop(image, mask, (self.height, self.width), self.crop.get("foreground_prob", 0.0))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        image_tensor = chw_tensor(image)
        if self.task == "segmentation":
            return image_tensor, target_tensor(self.task, mask)
        return image_tensor, target_tensor(self.task, stored_target(self.task, self.entries[index], self.num_classes))
