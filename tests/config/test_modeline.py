"""Every shipped params file names a schema its editor finds from where the file stands, and
`python -m pipeline init` installs an example as params.yaml with that line rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config.modeline import installed_text, resolve_reference, schema_reference
from pipeline.config.params import load_params
from pipeline.config.schema import ROOT_SCHEMA, SCHEMA_DIR
from tests.conftest import REPO

SHIPPED = sorted([REPO / "params.yaml", *(REPO / "configs").glob("*.yaml")])
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_modeline_resolves_to_the_schema_from_where_the_file_stands(path: Path):
    text = path.read_text()
    reference = schema_reference(text)
    assert text.startswith("# yaml-language-server: $schema="), f"{path}: the schema line must come first"
    assert reference and resolve_reference(reference, path) == (SCHEMA_DIR / ROOT_SCHEMA).resolve(), (
        f"{path}: $schema={reference} resolves to {resolve_reference(reference, path)}"
    )


def _link_repo_data(folder: Path) -> None:
    """The example's relative paths (data.root, model.pretrained) resolve from params.yaml's folder."""
    for name in ("data", "weights"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_init_installs_an_example_that_validates_and_finds_its_schema(config: Path, tmp_path, capsys):
    out = tmp_path / "project" / "params.yaml"
    out.parent.mkdir()
    _link_repo_data(out.parent)
    assert main(["init", str(config), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text, original = out.read_text(), config.read_text()
    assert resolve_reference(schema_reference(text), out) == (SCHEMA_DIR / ROOT_SCHEMA).resolve()
    assert text.splitlines()[1:] == original.splitlines()[1:]  # only the schema line differs
    assert load_params(out).get("data.task") in ("segmentation", "classification", "multilabel")


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    out.write_text("mine\n")
    assert main(["init", str(CONFIGS[0]), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["init", str(CONFIGS[0]), "--out", str(out), "--force"]) == 0
    assert out.read_text().splitlines()[1:] == CONFIGS[0].read_text().splitlines()[1:]
    assert list(tmp_path.iterdir()) == [out]  # nothing left beside it (written atomically)


def test_init_at_the_repo_root_gives_the_shipped_line_and_adds_one_when_missing(tmp_path):
    text, reference = installed_text(CONFIGS[0], REPO / "params.yaml")
    assert reference == "schemas/params.schema.json"
    assert text.splitlines()[0] == (REPO / "params.yaml").read_text().splitlines()[0]
    bare = tmp_path / "bare.yaml"
    bare.write_text("# no schema line here\ndata: {}\n")
    text, reference = installed_text(bare, tmp_path / "sub" / "params.yaml")
    assert text.endswith("# no schema line here\ndata: {}\n") and schema_reference(text) == reference
    assert resolve_reference(reference, tmp_path / "sub" / "params.yaml") == (SCHEMA_DIR / ROOT_SCHEMA).resolve()


def test_init_of_a_missing_file_is_one_clear_error(tmp_path, capsys):
    assert main(["init", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: cannot read it" in err and "Traceback" not in err
    assert not (tmp_path / "params.yaml").exists()
