"""The validate stage: every check of the whole file before any stage works. A valid file gets the
constant record the split stage depends on; problems in several sections are all listed, exit 2, and
nothing is written."""

from __future__ import annotations

import json

from stages.validate import PARAMS, RECORD, main
from tests.conftest import make_workspace, write_params


def test_a_valid_file_gets_the_constant_record(tmp_path, capsys):
    params = make_workspace(tmp_path, stages=())
    assert main(["--params", str(params)]) == 0
    record = tmp_path / "outputs/validate/valid.json"
    assert json.loads(record.read_text()) == RECORD
    first = record.read_bytes()
    write_params(params, params, **{"optimizer.lr": 0.01})  # another valid value: the same record
    assert main(["--params", str(params)]) == 0 and record.read_bytes() == first  # nothing after re-runs
    assert "valid" in capsys.readouterr().out


def test_problems_only_a_built_component_shows_are_all_listed_and_nothing_is_written(tmp_path, capsys):
    params = make_workspace(
        tmp_path,
        stages=(),
        **{
            "loss.params": {"smooth": "high"},
            "scheduler.params": {"eta_min": "low"},
            "augment.train": [{"Affine": {"rotate": "a lot"}}],
            "model.pretrained": "weights/none.safetensors",
        },
    )
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    for key in ("loss.params.smooth", "scheduler.params.eta_min", "augment.train[0]", "model.pretrained"):
        assert key in err, (key, err)
    assert "Traceback" not in err and not (tmp_path / "outputs").exists()


def test_it_reads_every_section():
    from tests.conftest import REPO

    assert set(PARAMS) == set(json.loads((REPO / "schemas/params.schema.json").read_text())["properties"])
