"""configs/*.yaml cannot drift from params.yaml: each is generated from it and a small overlay
(configs/overlays/), comments and all, and `python -m pipeline init` installs one with exactly the
shipped keys (so `dvc exp show` of a run made from it has no `-` columns)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import examples
from pipeline.config.errors import PipelineError
from pipeline.config.params import flatten
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _keys(path: Path) -> set[str]:
    return set(flatten(yaml.safe_load(path.read_text())))


def test_every_example_is_what_params_yaml_and_its_overlay_make(capsys):
    assert [p.name for p in CONFIGS] == [p.name for p in examples.overlays()]
    assert examples.stale() == {}
    assert main(["configs", "--check"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_an_example_has_exactly_the_keys_and_comments_of_params_yaml(config):
    assert _keys(config) == _keys(REPO / "params.yaml")
    text = config.read_text()
    comment_lines = [
        line for line in (REPO / "params.yaml").read_text().splitlines()[1:] if line.lstrip().startswith("#")
    ]
    assert comment_lines and all(line in text.splitlines() for line in comment_lines)
    assert "  scale_lr: false               # several GPUs: lr x number of processes" in text


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_init_installs_exactly_the_shipped_keys(config, tmp_path, capsys):
    out = tmp_path / "params.yaml"
    out.write_text("mine\n")
    assert main(["init", str(config), "--force", "--out", str(out)]) == 0
    assert _keys(out) == _keys(REPO / "params.yaml")
    overlay = yaml.safe_load((REPO / "configs" / "overlays" / config.name).read_text())
    installed = flatten(yaml.safe_load(out.read_text()))
    for key, value in flatten(overlay).items():
        assert installed[key] == value, key


def _fake(tmp_path: Path, params: str, overlay: str) -> tuple[Path, Path]:
    (tmp_path / "configs" / "overlays").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "configs" / "overlays" / "x.yaml").write_text(overlay)
    return tmp_path / "params.yaml", tmp_path / "configs"


def test_a_key_added_to_params_yaml_reaches_every_example(tmp_path):
    params, configs = _fake(
        tmp_path,
        "# yaml-language-server: $schema=schemas/params.schema.json\n# the file\na:\n  b: 1   # bee\n",
        "# x example\na:\n  b: 2   # two\n",
    )
    [(path, text)] = examples.stale(params, configs).items()
    assert path == configs / "x.yaml"
    assert text.splitlines()[1:] == ["# x example", "# the file", "a:", "  b: 2   # two"]
    path.write_text(text)
    assert examples.stale(params, configs) == {}
    params.write_text(params.read_text() + "  c: null   # new\n")
    assert examples.stale(params, configs)[path].splitlines()[-1] == "  c: null   # new"


def test_an_overlay_key_params_yaml_lacks_is_refused(tmp_path):
    params, configs = _fake(tmp_path, "a:\n  b: 1\n", "a:\n  bb: 2\n")
    with pytest.raises(PipelineError, match=r"x\.yaml: a\.bb is not in params\.yaml"):
        examples.stale(params, configs)


def test_init_goes_back_to_the_shipped_segmentation_default(tmp_path, capsys):
    """After starting from the classification example, `init configs/segmentation.yaml --force` gives
    back params.yaml: its keys, values and comments (less the example's own leading comment; the schema
    line points from where the file lands)."""
    out = tmp_path / "params.yaml"
    assert main(["init", str(REPO / "configs/classification.yaml"), "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["data"]["task"] == "classification"
    assert main(["init", str(REPO / "configs/segmentation.yaml"), "--force", "--out", str(out)]) == 0
    shipped = (REPO / "params.yaml").read_text()
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(shipped)
    overlay = (REPO / "configs/overlays/segmentation.yaml").read_text().splitlines()
    own = {line for line in overlay if line.startswith("#")}
    assert [line for line in out.read_text().splitlines() if line not in own][1:] == shipped.splitlines()[1:]
