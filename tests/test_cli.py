"""`python -m pipeline` as a user runs it: exit codes, one problem per line, no tracebacks. A few tests
start the real process (``run_cli``: the entry point, its exit status, a closed pipe); the rest call its
``main`` in this process (``cli``), which gives the same exit code and output without paying the imports
of a fresh interpreter each time."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_params

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``run_cli`` in this process: ``pipeline.cli.main`` in the repository, its exit code (argparse's
    SystemExit included) and what it wrote to stdout and stderr; an exception escaping ``main``, which a
    user would see as a traceback, fails the test."""
    from pipeline.cli import main

    monkeypatch.chdir(REPO)

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["python", "-m", "pipeline", *args], code, out, err)

    return call


@pytest.mark.slow
def test_validate_default_file():
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "params.yaml: valid"


@pytest.mark.slow
def test_validate_reports_every_problem_and_exits_2(tmp_path):
    bad = write_params(
        tmp_path / "params.yaml",
        replace={"  epochs: ": "  epochs: -3 #", "  task: segmentation ": "  tsk: segmentation  "},
    )
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(bad) + ":")]
    assert any(": data.tsk: unknown key (did you mean 'task'?)" in line for line in lines), result.stderr
    assert any(": train.epochs: -3 is less than the minimum of 1" in line for line in lines), result.stderr


def test_validate_bad_inputs_have_no_traceback(tmp_path, cli: Cli):
    cases = {"empty.yaml": "", "list.yaml": "- 1\n", "tabs.yaml": "a:\n\tb: 1\n", "broken.yaml": "a: [\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name in [*cases, "missing.yaml"]:
        result = cli("validate", str(tmp_path / name))
        assert result.returncode == 2, name
        assert "Traceback" not in result.stderr and str(tmp_path / name) in result.stderr, (name, result.stderr)


def test_show_fills_defaults(tmp_path, cli: Cli):
    # linked: relative paths in the file must still resolve
    path = write_params(tmp_path / "params.yaml", drop=["evaluate.overlays"], link=True)
    data = yaml.safe_load(path.read_text())
    result = cli("show", "evaluate", "--params", str(path))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["evaluate"]["overlays"] == 8  # the schema default
    assert shown["evaluate"]["batch_size"] == data["evaluate"]["batch_size"]
    whole = yaml.safe_load(cli("show", "--params", str(path)).stdout)
    assert set(whole) == set(data)


def test_show_unknown_section(cli: Cli):
    result = cli("show", "los")
    assert result.returncode == 2 and "did you mean 'loss'?" in result.stderr


def test_list_unknown_kind(cli: Cli):
    result = cli("list", "lossess")
    assert result.returncode == 2 and "unknown kind" in result.stderr


def test_unknown_registry_name_reads_naturally(tmp_path, cli: Cli):
    path = write_params(tmp_path / "params.yaml", replace={"  name: dice_bce ": "  name: focl     "}, link=True)
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "loss.name: unknown loss 'focl' (did you mean 'focal'?)" in result.stderr, result.stderr


def test_list_patterns_match_names_without_their_family_prefix(capsys):
    from pipeline.cli import main

    assert main(["list", "models", "resnet18"]) == 0
    assert capsys.readouterr().out.split() == ["timm/resnet18", "torchvision/resnet18"]
    assert main(["list", "models", "--long", "resnet1*"]) == 0  # an option before the pattern, too
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.split()[0].split("/")[-1].startswith("resnet1") and len(line.split()) > 1 for line in out)
    assert main(["list", "models", "timm/resnet18"]) == 0
    assert capsys.readouterr().out.split() == ["timm/resnet18"]


@pytest.mark.slow
def test_a_reader_that_stops_early_gets_no_traceback():
    """`python -m pipeline list models | head -1`: the pipe closes while thousands of names remain."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "list", "models"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and first.strip() and "Traceback" not in err, err


def test_show_names_the_chosen_components_other_arguments_and_validate_takes_params(tmp_path, capsys):
    from pipeline.cli import main

    path = write_params(
        tmp_path / "params.yaml", link=True, **{"loss": {"name": "focal", "params": {"gamma": 1.0}, "terms": []}}
    )
    assert main(["show", "loss", "--params", str(path)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["loss"]["params"] == {"gamma": 1.0}
    assert "# focal: the other arguments loss.params may set, with their defaults\n#   alpha: null" in out
    assert "gamma" not in out.split("# focal")[1]  # already set
    assert main(["validate", "--params", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid"
