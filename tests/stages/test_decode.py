"""The decode stage on tiny workspaces built by the real split and model stages: it writes the cache
(or, with data.cache: none, the index saying there is none), refuses to run before the split, and the
train stage reads from it: with the image files gone it still trains, to the same history as a run
that decodes the files, and a cache decoded at another size stops it, naming `dvc repro decode`."""

from __future__ import annotations

import json

import pytest

from pipeline.data.decoded import DecodedDataset
from pipeline.data.manifest import load_manifest
from stages import decode
from stages import train as train_stage
from tests.conftest import make_workspace, train_history, train_workspace, write_params


def test_decode_stage_writes_the_cache_of_train_and_val(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=("split",), **{"data.image_size": [16, 24]})
    assert decode.main(["--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "decode: train 14 + val 3 images at 16x24 -> outputs/decode, 26.1 KB on disk" in out  # 17 x 16*24*(3+1)
    cache = tmp_path / "outputs/decode"
    index = json.loads((cache / "index.json").read_text())
    manifest = load_manifest(tmp_path / "outputs/split/manifest.json")
    assert index["enabled"] and index["manifest_fingerprint"] == manifest.fingerprint
    assert index["image_size"] == [16, 24] and index["task"] == "segmentation"
    assert {s: v["count"] for s, v in index["splits"].items()} == {"train": 14, "val": 3}
    dataset = DecodedDataset(cache, manifest, "val", root=tmp_path / "data", image_size=[16, 24])
    image, mask = dataset[2]
    assert image.shape == (3, 16, 24) and mask.shape == (16, 24)
    assert [p.name for p in tmp_path.joinpath("outputs").iterdir() if p.name.startswith(".")] == []


def test_decode_stage_with_the_cache_off_writes_an_index_saying_so(tmp_path):
    params = make_workspace(tmp_path, stages=("split",), **{"data.cache": "none"})
    assert decode.main(["--params", str(params)]) == 0
    files = [p.name for p in (tmp_path / "outputs/decode").rglob("*")]
    assert files == ["index.json"]
    assert json.loads((tmp_path / "outputs/decode/index.json").read_text())["enabled"] is False


def test_decode_stage_refuses_a_missing_manifest(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=())
    assert decode.main(["--params", str(params)]) == 2
    assert "run the split stage first" in capsys.readouterr().err
    assert not (tmp_path / "outputs/decode").exists()


@pytest.mark.slow
def test_training_reads_the_cache_and_learns_exactly_what_it_learns_from_files(tmp_path, shapes_dataset):
    run = {"stages": ("split", "decode", "model"), "train.epochs": 2}
    by_cache = train_workspace(tmp_path / "cache", shapes_dataset, **run)
    for path in (tmp_path / "cache/data").rglob("*.png"):  # training can only read the cache now
        path.unlink()
    assert train_stage.main(["--params", str(by_cache)]) == 0
    by_files = train_workspace(tmp_path / "files", shapes_dataset, **run, **{"data.cache": "none"})
    assert train_stage.main(["--params", str(by_files)]) == 0
    learned = [
        [
            {k: v for k, v in row.items() if k in ("epoch", "lr", "train_loss") or k.startswith("val_")}
            for row in train_history(params)
        ]
        for params in (by_cache, by_files)
    ]  # timings aside
    assert len(learned[0]) == 2 and learned[0] == learned[1]
    best = "outputs/train/best.safetensors"
    assert (tmp_path / "cache" / best).read_bytes() == (tmp_path / "files" / best).read_bytes()


def test_training_refuses_a_cache_decoded_at_another_size(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=("split", "decode", "model"))
    write_params(params, params, **{"data.image_size": [24, 24]})  # edited, decode not re-run
    assert train_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "outputs/decode was decoded for another image size ([32, 32], now [24, 24])" in err
    assert "dvc repro decode" in err
