"""The decode stage: decode and resize every train and val image (and mask) once, for every epoch.

``python -m stages.decode`` writes ``outputs/decode/`` (memory-mapped uint8 shards and an
``index.json`` tying them to the manifest and ``data.image_size`` and recording each shard's size and
sha256, which training checks before its first epoch), or with ``data.cache: none`` an index saying
there is no cache. A killed run leaves no worker behind, and its partial ``outputs/.decode.pid*.tmp/``
goes at the next run. Training and validation then read samples from it instead of
decoding files each epoch. The work is :mod:`pipeline.data.decoded`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from pipeline import outputs
from pipeline.config.params import ParamsView
from pipeline.data import decoded
from pipeline.data.dataset import image_hw
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage

PARAMS = ("data.task", "data.image_size", "data.cache", "data.resize", "data.max_side")


def decode(view: ParamsView) -> dict[str, Any]:
    """Decode the manifest's train and val splits at data.image_size into outputs/decode (or write
    the index of no cache); return the index written."""
    task, size, root = view["data.task"], view["data.image_size"], view.root
    manifest = read_manifest(root, task)
    out = root / outputs.DECODE
    if view["data.cache"] == "none":
        index = decoded.write_disabled(out)
        print(
            f"decode: data.cache is none: no decoded cache ({outputs.DECODE} says so); training decodes "
            "every image each epoch"
        )
        return index
    height, width = image_hw(size)
    counts = {s: len(manifest.splits[s]) for s in decoded.SPLITS}
    resize = view["data.resize"]
    if resize == "none":
        print(
            f"decode: {' + '.join(f'{s} {n}' for s, n in counts.items())} images at native resolution "
            f"(data.resize none{_shrunk(view['data.max_side'])}) -> {outputs.DECODE}"
        )
    else:
        print(
            f"decode: {' + '.join(f'{s} {n}' for s, n in counts.items())} images at {height}x{width} -> "
            f"{outputs.DECODE}, {decoded.human_bytes(decoded.cache_bytes(manifest, size))} on disk "
            "(and as much again in DVC's cache unless its cache.type links files)"
        )
    started = time.perf_counter()
    index = decoded.write_decoded(
        out,
        manifest,
        root=view.resolve_path(manifest.root),
        image_size=size,
        resize=resize,
        max_side=view["data.max_side"],
    )
    seconds = time.perf_counter() - started
    rate = sum(counts.values()) / max(seconds, 1e-9)
    print(
        f"decode: wrote {outputs.DECODE} in {seconds:.1f} s ({rate:.0f} images/s, "
        f"{decoded.human_bytes(index['bytes'])})"
    )
    return index


def _shrunk(max_side: int | None) -> str:
    """How data.max_side changes the native images, for the decode line."""
    return f"; longer sides over {max_side} px shrunk to it" if max_side else ""


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("decode", PARAMS, decode, argv)


if __name__ == "__main__":
    sys.exit(main())
