"""`dvc repro` after edits that reach the data path (an augmentation probability, the split seed, the
decoded cache), in a copy of the session's reproduced repository: which stages re-run, and that the same
samples give the same weights (tests/test_end_to_end.py holds the params and code edits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EVERY_STAGE, commit_all, edit_params, ran, sh

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(3)]  # real dvc repro in a git repository


def test_repro_after_data_path_edits(clone: Path):
    ws = clone
    edit_params(ws, "- Fliplr: {p: 0.5}", "- Fliplr: {p: 0.1}")
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    stages = ran(sh(ws, "dvc", "repro").stdout)
    # Each sample's flip is drawn from its own seed: only the draws between 0.1 and 0.5 change, and when
    # the best epoch's weights come out the same, DVC rightly stops before export (as after a loss edit, tests/test_end_to_end.py).
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["validate", "augment", "train", "preview", "evaluate", *changed]
    commit_all(ws)

    edit_params(ws, "  seed: 42 ", "  seed: 43 ")
    assert set(ran(sh(ws, "dvc", "repro").stdout)) == set(EVERY_STAGE)
    commit_all(ws)

    # Without the decoded cache training decodes the files: the same samples, so the same weights on CPU
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    edit_params(ws, "  cache: decoded ", "  cache: none    ")
    stages = ran(sh(ws, "dvc", "repro").stdout)
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["validate", "decode", "train", "preview", "evaluate", *changed]
    edit_params(ws, "  cache: none    ", "  cache: decoded ")
    commit_all(ws)
