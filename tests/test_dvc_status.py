"""A setting that no training input depends on re-runs only what reads it: after one real `dvc repro`
in a temporary repository, each such key is edited and `dvc status` (cheap: nothing runs) must name
the stage that draws, evaluates, exports or records with it, and neither train nor anything upstream.
``validate`` re-runs on every edit (it checks the whole file); its record is constant, so it re-runs
nothing after it (tests/test_end_to_end.py shows that on real repros)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_params
from tests.test_end_to_end import make_repo, sh

# key -> a new value, and the stages that must change (besides validate)
EDITS = [
    ("augment.preview.images", 5, {"preview"}),
    ("augment.preview.versions", 3, {"preview"}),
    ("augment.preview.seed", 1, {"preview"}),
    ("evaluate.overlays", 2, {"evaluate"}),
    ("evaluate.threshold", 0.4, {"evaluate"}),
    ("evaluate.confusion_sample", 500, {"evaluate"}),
    ("export.opset", 18, {"export"}),
    ("export.tolerance", 0.001, {"export"}),
    ("export.dynamic_size", False, {"export"}),
    ("tracking.enabled", True, set()),
    ("tracking.uri", "sqlite:///other.db", set()),
    ("tracking.experiment", "elsewhere", set()),
    ("tracking.run_name", "named", set()),
    ("tracking.system_metrics", 0, set()),
    ("tracking.register_model", "shapes", set()),
]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    ws = make_repo(tmp_path_factory.mktemp("status"), images=12)
    write_params(
        ws / "params.yaml", ws / "params.yaml", replace={"  enabled: true\n  uri:": "  enabled: false\n  uri:"}
    )
    sh(ws, "dvc", "repro")
    assert json.loads(sh(ws, "dvc", "status", "--json").stdout) == {}
    return ws


def _changed(ws) -> set[str]:
    return {name.rpartition(":")[2] for name in json.loads(sh(ws, "dvc", "status", "--json").stdout)}


@pytest.mark.slow
@pytest.mark.pipeline_runs(2)
def test_an_edit_no_training_input_depends_on_leaves_train_and_upstream_unchanged(reproduced):
    ws = reproduced
    shipped = (ws / "params.yaml").read_text()
    try:
        for key, value, stages in EDITS:
            write_params(ws / "params.yaml", ws / "params.yaml", **{key: value})
            assert _changed(ws) == {"validate", *stages}, key
            (ws / "params.yaml").write_text(shipped)
    finally:
        (ws / "params.yaml").write_text(shipped)
    assert _changed(ws) == set()  # the control: back to the reproduced file, nothing to run
    write_params(ws / "params.yaml", ws / "params.yaml", **{"augment.train": []})  # a training input
    assert {"train", "augment", "preview"} <= _changed(ws)
    (ws / "params.yaml").write_text(shipped)
