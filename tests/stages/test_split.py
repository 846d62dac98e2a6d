"""The split stage end to end: it writes the manifest (byte-identical on a re-run), and bad data or bad
fractions exit 2 naming the file or key, writing nothing."""

from __future__ import annotations

import os

import pytest

from pipeline.config.errors import ConfigError
from pipeline.config.params import load_params
from pipeline.data.manifest import SPLITS, load_manifest
from stages.split import main
from tests.conftest import write_params
from tests.data.test_split import make_segmentation


def test_stage_writes_the_manifest(tmp_path, capsys):
    make_segmentation(tmp_path / "mydata", 20)
    params = write_params(tmp_path / "params.yaml", replace={"root: data/shapes-seg": "root: mydata"}, link=True)
    assert main(["--params", str(params)]) == 0
    out = tmp_path / "outputs" / "split" / "manifest.json"
    first = out.read_bytes()
    m = load_manifest(out)
    assert m.root == "mydata" and m.task == "segmentation" and m.num_classes == 2
    assert [len(m.splits[s]) for s in SPLITS] == [14, 3, 3]
    assert "train 14 (70.0%), val 3 (15.0%), test 3 (15.0%)" in capsys.readouterr().out
    assert main(["--params", str(params)]) == 0
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["manifest.json"]  # no temp files left


def test_bad_data_exits_2_names_the_file_and_writes_nothing(tmp_path, capsys):
    root = make_segmentation(tmp_path / "mydata", 5)
    os.remove(root / "masks" / "im001.png")
    params = write_params(tmp_path / "params.yaml", replace={"root: data/shapes-seg": "root: mydata"}, link=True)
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "split: error: 1 image(s) without a mask" in err and "images/im001.png" in err
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_validate_reports_fractions_by_key(tmp_path):
    make_segmentation(tmp_path / "mydata", 5)
    params = write_params(
        tmp_path / "params.yaml",
        link=True,
        replace={"root: data/shapes-seg": "root: mydata", "test: 0.15}": "test: 0.25}"},
    )
    with pytest.raises(ConfigError) as info:
        load_params(params)
    [problem] = [p for p in info.value.problems if p.key == "split.fractions"]
    assert "must sum to 1" in problem.message and "= 1.1" in problem.message
    assert problem.line == next(i for i, t in enumerate(params.read_text().splitlines(), 1) if "fractions" in t)
    assert main(["--params", str(params)]) == 2
    assert not (tmp_path / "outputs").exists()
