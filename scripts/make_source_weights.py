"""Step 1 of the fine-tuning demo: train a source model on a source task and ship its weights.

The default pipeline fine-tunes from ``weights/unet_classic_shapes_boundary.safetensors``, which this
script makes, offline, in about a minute of CPU time:

- source task: 3-class segmentation of generated shape scenes (background / shape interior / shape
  boundary) drawn with another seed than the default dataset, so neither the images nor the labels
  are the target's;
- source model: the default classic U-Net (base_channels 16, depth 3, bilinear), with a 3-channel
  head.

The target (binary shape segmentation, 1 logit channel) then copies everything but that head: the
model stage drops the 3-channel ``head`` (shape mismatch), reports it in outputs/model/summary.json,
trains a new 1-channel head, and training fine-tunes the lot.

    python scripts/make_source_weights.py            # rewrites the shipped file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.atomic import atomic_path
from pipeline.data.synthetic import segmentation_scene
from pipeline.hashing import file_sha256
from pipeline.models.unet import ClassicUNet
from pipeline.training.batches import to_device

OUT = Path(__file__).resolve().parent.parent / "weights" / "unet_classic_shapes_boundary.safetensors"
UNET = {"base_channels": 16, "depth": 3, "upsampling": "bilinear"}  # = params.yaml model.unet
SOURCE_SEED = 2024  # the default dataset uses 1234: other scenes
CLASSES = ("background", "interior", "boundary")


def boundary_labels(mask: np.ndarray) -> np.ndarray:
    """Binary mask -> 0 background, 1 interior, 2 boundary (a 2-pixel band across the outline)."""
    inside = mask > 0
    padded = np.pad(inside, 1, mode="edge")
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    eroded = np.logical_and.reduce([inside, *neighbours])
    dilated = np.logical_or.reduce([inside, *neighbours])
    labels = inside.astype(np.int64)
    labels[dilated & ~eroded] = 2
    return labels


def source_task(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated scenes: uint8 images [n, 3, size, size] and int64 labels [n, size, size]."""
    images, labels = [], []
    for index in range(n):
        image, mask = segmentation_scene(seed, index, size)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        labels.append(torch.from_numpy(boundary_labels(mask)))
    return torch.stack(images), torch.stack(labels)


def mean_iou(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean intersection over union of the three classes, pooled over the set."""
    model.eval()
    with torch.no_grad():
        x, y = to_device(images, labels, torch.device("cpu"))
        pred = model(x).argmax(1)
    ious = [
        ((pred == c) & (y == c)).sum().item() / max(((pred == c) | (y == c)).sum().item(), 1)
        for c in range(len(CLASSES))
    ]
    return float(np.mean(ious))


def train_source(*, n_train: int, n_val: int, epochs: int, seed: int) -> tuple[torch.nn.Module, dict[str, float]]:
    torch.manual_seed(seed)
    images, labels = source_task(n_train + n_val, 64, SOURCE_SEED)
    model = ClassicUNet(in_chans=3, num_outputs=len(CLASSES), **UNET)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-n_train // 16)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    # Boundary pixels are rare; weight them up so the band is learned, not ignored.
    weight = torch.tensor([1.0, 1.0, 3.0])
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train)
        for start in range(0, n_train, 16):
            batch = order[start : start + 16]
            x, y = to_device(images[batch], labels[batch], torch.device("cpu"))
            if torch.rand(()) < 0.5:  # flips keep the task's statistics and double the data
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(model(x), y, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    return model, {"val_miou": mean_iou(model, images[n_train:], labels[n_train:]), "final_loss": loss.item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=256, help="source training scenes")
    parser.add_argument("--val", type=int, default=80, help="held-out source scenes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, metrics = train_source(n_train=args.train, n_val=args.val, epochs=args.epochs, seed=args.seed)
    # One metadata key: safetensors keeps metadata in a hash map, so several keys would be written
    # in a random order and the same weights would not give the same bytes.
    metadata = {
        "source_model": json.dumps(
            {
                "source_task": "3-class segmentation of generated shape scenes: " + "/".join(CLASSES),
                "scene_seed": SOURCE_SEED,
                "architecture": {"source": "unet", "name": "classic", **UNET},
                "epochs": args.epochs,
                "train_scenes": args.train,
                "val_scenes": args.val,
                "seed": args.seed,
                "val_miou": round(metrics["val_miou"], 4),
                "made_by": "scripts/make_source_weights.py",
            },
            sort_keys=True,
        )
    }
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {file_sha256(args.out)}): "
        f"source val mIoU {metrics['val_miou']:.3f} after {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
