"""The decoded cache's index.json is data: a shard path that is absolute or leads (symlinks followed)
outside the cache folder, an index that does not describe the shards (no shards, wrong counts, dtypes or
shapes, missing keys, bad JSON, an old format) and a shard changed after the decode stage wrote it
(zeroed, truncated) are each refused with a message naming index.json or the shard and `dvc repro
decode`, before a sample is read; and the train stage stops on them without writing its weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config.errors import PipelineError
from pipeline.data import decoded
from pipeline.data.decoded import DecodedDataset, open_split, write_decoded
from pipeline.hashing import file_sha256
from stages import train as train_stage
from tests.conftest import make_workspace
from tests.data.test_decoded import SIZE, manifest_of


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """Generated data and its decoded cache, written once; each test edits a copy of the cache."""
    root = tmp_path_factory.mktemp("built")
    manifest = manifest_of(root / "data")
    write_decoded(root / "decode", manifest, root=root / "data", image_size=SIZE)
    return root / "data", root / "decode"


@pytest.fixture
def cache(tmp_path, built) -> Path:
    shutil.copytree(built[1], tmp_path / "decode")
    return tmp_path / "decode"


def open_train(cache: Path, built: tuple[Path, Path], split: str = "train") -> DecodedDataset:
    data = built[0]
    return DecodedDataset(cache, manifest_of(data), split, root=data, image_size=SIZE)


def edit_index(cache: Path, change: Callable[[dict[str, Any]], None]) -> None:
    index = json.loads((cache / "index.json").read_text())
    change(index)
    (cache / "index.json").write_text(json.dumps(index))


def shard(index: dict[str, Any], number: int = 0) -> dict[str, Any]:
    return index["splits"]["train"]["shards"][number]


def test_the_index_records_each_shard_file_size_and_sha256(built):
    index = json.loads((built[1] / "index.json").read_text())
    assert index["format"] == decoded.FORMAT_VERSION == 2
    for name, split in index["splits"].items():
        for entry in split["shards"]:
            for kind in ("images", "targets"):
                path = built[1] / name / entry[kind]
                assert entry["bytes"][kind] == path.stat().st_size > 128  # the .npy header and the rows
                assert entry["sha256"][kind] == file_sha256(path)


@pytest.mark.parametrize(
    ("bad", "why"), [("/etc/hostname", "an absolute path"), ("../../../../etc/hostname", "leads outside")]
)
def test_a_shard_path_outside_the_cache_folder_is_refused(cache, built, bad, why):
    edit_index(cache, lambda index: shard(index).update(images=bad))
    with pytest.raises(PipelineError) as caught:
        open_train(cache, built)
    message = str(caught.value)
    assert str(cache / "index.json") in message and repr(bad) in message and why in message
    assert "splits.train.shards[0].images" in message and message.endswith("dvc repro decode")


@pytest.mark.parametrize("folder", ["/tmp", "..", "../.."])
def test_a_split_folder_outside_the_cache_folder_is_refused(cache, built, folder):
    edit_index(cache, lambda index: index["splits"]["train"].update(folder=folder))
    with pytest.raises(PipelineError, match=r"index\.json: splits\.train\.folder .*dvc repro decode"):
        open_train(cache, built)


def test_a_shard_linked_to_a_file_outside_the_cache_folder_is_refused(cache, built, tmp_path):
    """Even with the same bytes (its size and sha256 match): nothing is read from outside."""
    shard_file = cache / "train/shard-00000.images.npy"
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(shard_file, outside)
    shard_file.unlink()
    shard_file.symlink_to(outside)
    with pytest.raises(PipelineError, match=rf"shard-00000.images.npy' leads outside {cache} \(to {outside}\)"):
        open_train(cache, built)
    shard_file.unlink()  # a link that stays inside the folder is read
    (cache / "inside.npy").write_bytes(outside.read_bytes())
    shard_file.symlink_to(cache / "inside.npy")
    assert len(open_train(cache, built)) == 9


def test_a_zeroed_shard_is_refused_before_the_first_sample(cache, built):
    shard_file = cache / "train/shard-00000.images.npy"
    size = shard_file.stat().st_size
    header = 128  # keep the .npy header, so numpy would read the zeros as images
    shard_file.write_bytes(shard_file.read_bytes()[:header] + bytes(size - header))
    assert np.load(shard_file).shape == (9, 3, *SIZE)  # a well-formed array of zeros
    with pytest.raises(PipelineError) as caught:
        open_train(cache, built)
    assert str(caught.value) == (
        f"{shard_file}: its content differs from the sha256 index.json recorded: the shard "
        "changed after the decode stage wrote it; rebuild it: dvc repro decode"
    )


def test_a_truncated_or_missing_shard_is_refused(cache, built):
    shard_file = cache / "val/shard-00000.targets.npy"
    size = shard_file.stat().st_size
    shard_file.write_bytes(shard_file.read_bytes()[:-1])
    with pytest.raises(
        PipelineError,
        match=rf"{shard_file}: {size - 1} bytes, but index.json recorded {size}: "
        "the shard changed .*dvc repro decode",
    ):
        open_train(cache, built, "val")
    shard_file.unlink()
    with pytest.raises(PipelineError, match=rf"{shard_file}: cannot read this shard .*dvc repro decode"):
        open_train(cache, built, "val")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(index: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = index
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


BROKEN = {  # what is edited in index.json -> what the message says
    "no shards": (_set("splits.train.shards", []), r"splits\.train\.shards is empty but the split has 9 samples"),
    "count": (_set("splits.train.count", 8), r"splits\.train\.count is 8, not 9"),
    "shard count": (_set("splits.train.shards.0.count", 8), r"splits\.train\.shards hold 8 samples, not the split's 9"),
    "shard start": (_set("splits.train.shards.0.start", 1), r"splits\.train\.shards\[0\] starts at sample 1"),
    "image dtype": (_set("splits.train.image_dtype", "float32"), r"train\.image_dtype is 'float32', not 'uint8'"),
    "target shape": (_set("splits.train.target_shape", [16, 21]), r"target_shape is \[16, 21\], not \[16, 20\]"),
    "no folder": (_set("splits.train.folder", KeyError), r"splits\.train\.folder is missing or not a path"),
    "no digest": (_set("splits.train.shards.0.sha256", KeyError), r"shards\[0\] lacks the byte size or sha256"),
    "no split": (_set("splits.train", KeyError), r"holds the splits val, not 'train'"),
    "no splits": (_set("splits", KeyError), r"'splits' is missing"),
    "split not an object": (_set("splits.train", [1]), r"splits\.train is not an object"),
    "shards not a list": (_set("splits.train.shards", {}), r"splits\.train\.shards is missing or not a list"),
    "old format": (_set("format", 1), r"cache format 1 is not 2"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_an_index_that_does_not_describe_the_shards_is_refused(cache, built, case):
    change, message = BROKEN[case]
    edit_index(cache, change)
    with pytest.raises(PipelineError, match=message) as caught:
        open_train(cache, built)
    assert str(caught.value).endswith("dvc repro decode")


@pytest.mark.parametrize("text", ["{not json", "[]", "\xff"])
def test_an_unreadable_index_is_refused_by_what_training_calls(cache, built, text):
    (cache / "index.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(PipelineError, match=r"index\.json .*dvc repro decode"):
        open_split(cache, manifest_of(built[0]), "train", root=built[0], image_size=SIZE)


def test_a_shard_of_other_shape_than_its_index_says_is_refused(cache, built):
    """The index says 9 rows; the file (with its size and digest recorded to match) holds 8."""
    shard_file = cache / "train/shard-00000.images.npy"
    np.save(shard_file, np.zeros((8, 3, *SIZE), np.uint8))
    edit_index(
        cache,
        lambda index: shard(index).update(
            bytes={**shard(index)["bytes"], "images": shard_file.stat().st_size},
            sha256={**shard(index)["sha256"], "images": file_sha256(shard_file)},
        ),
    )
    wrong = rf"{shard_file}: holds uint8 \[8, 3, 16, 20\], not uint8 \[9, 3, 16, 20\]; .*dvc repro decode"
    with pytest.raises(PipelineError, match=wrong):
        open_train(cache, built)


def test_the_train_stage_stops_on_a_zeroed_shard_and_writes_no_weights(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=("split", "decode", "model"))
    shard_file = tmp_path / "outputs/decode/train/shard-00000.images.npy"
    shard_file.write_bytes(bytes(shard_file.stat().st_size))
    capsys.readouterr()
    assert train_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "outputs/decode/train/shard-00000.images.npy: its content differs from the sha256" in err
    assert "dvc repro decode" in err and "Traceback" not in err
    assert not (tmp_path / "outputs/train/best.safetensors").exists()
