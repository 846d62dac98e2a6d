"""The docs stay true: every command README.md and docs/*.md show in a ```bash block parses, every
repository path they name exists, and CI runs the README's test command.

Commands are parsed in this process by the parser of the program that would run them: our CLI's
(``python -m pipeline``), each stage's, each benchmark's and script's (their ``main(argv)`` stops right
after its ``parse_args``), DVC's own argparse parser and torchrun's. For ``mlflow``, ``pip`` and
``pytest`` the program must be one ``pyproject.toml`` declares (and ``pip install -e .[extra]`` an extra
it declares). Paths in backticks and link targets that start in a tracked top-level folder must exist;
``outputs/...`` paths must be outputs ``pipeline/outputs.py`` declares; a link's ``#anchor`` must be a
heading of the page it points to.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from pipeline import outputs
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Files and outputs a doc tells you to create, as an example: they must not exist, so they stay examples.
EXAMPLE_PATHS = {
    "docs/extending.md": {
        "stages/balance.py",
        "tests/stages/test_balance.py",
        "outputs/balance/shares.json",
        "pipeline/training/losses/fbeta.py",
        "schemas/sections/balance.schema.json",
        "pipeline/data/balance.py",
    },
}

# Commands a doc shows that another change brings; strict: once it lands, the entry must go.
PENDING: dict[tuple[str, ...], str] = {}

# Programs we do not ship or declare, but a doc may show for the surrounding workflow.
SYSTEM_PROGRAMS = {"git", "curl", "createdb"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


def _fenced_blocks(text: str, language: str) -> Iterator[tuple[int, str]]:
    """(first line number, body) of each fenced block of ``language``, indented ones too."""
    for match in re.finditer(rf"^([ \t]*)```{language}[ \t]*\n(.*?)^\1```[ \t]*$", text, re.M | re.S):
        yield text.count("\n", 0, match.start(2)) + 1, match.group(2)


def _lines(body: str) -> Iterator[tuple[int, str]]:
    """(offset of its first line, text) of each command line, ``\\``-continued lines joined."""
    start, parts = 0, []
    for offset, line in enumerate(body.splitlines()):
        if not parts:
            start = offset
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        yield start, " ".join([*parts, line])
        parts = []


def _commands(doc: Path) -> Iterator[Command]:
    name = doc.relative_to(REPO).as_posix()
    for first, body in _fenced_blocks(doc.read_text(encoding="utf-8"), "bash"):
        for offset, text in _lines(body):
            lexer = shlex.shlex(text, posix=True, punctuation_chars="&|;")
            lexer.whitespace_split, lexer.commenters = True, "#"
            piece: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", "|", ";"):
                    while piece and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", piece[0]):  # VAR=value prefixes
                        piece.pop(0)
                    if piece:
                        yield Command(name, first + offset, tuple(piece))
                    piece = []
                else:
                    piece.append(token)


ALL_COMMANDS = [c for doc in DOCS for c in _commands(doc)]


class _Parsed(Exception):
    """Raised where a program would start its work: its arguments parsed."""


@contextlib.contextmanager
def _stop_after_parsing() -> Iterator[None]:
    """``parse_args`` raises :class:`_Parsed` once it succeeds; a sub-command's ``func`` (our CLI calls
    ``args.func(args)`` after its own checks) does the same instead of running."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args

    def stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(parse_args(self, *args, **kwargs))

    def known(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        namespace, rest = parse_known_args(self, *args, **kwargs)
        if callable(getattr(namespace, "func", None)) and not isinstance(namespace.func, type):
            namespace.func = lambda _args: (_ for _ in ()).throw(_Parsed(_args))
        return namespace, rest

    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", stop),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", known),
        _whole_options(),
    ):
        yield


@contextlib.contextmanager
def _whole_options() -> Iterator[None]:
    """Parsers made meanwhile take no abbreviated options (a doc writes ``--params``, never ``--param``)."""
    init = argparse.ArgumentParser.__init__

    def whole(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    with mock.patch.object(argparse.ArgumentParser, "__init__", whole):
        yield


def _parses(run: Callable[[], Any], what: str) -> None:
    """``run`` reaches the end of its argument parsing; an argparse error fails with its message."""
    err = io.StringIO()
    with _stop_after_parsing(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run()
        except _Parsed:
            return
        except SystemExit as exc:
            pytest.fail(f"{what}: does not parse (exit {exc.code}): {err.getvalue().strip()}")
    pytest.fail(f"{what}: returned without parsing arguments")


def _declared() -> tuple[set[str], set[str]]:
    """The distribution names pyproject.toml declares (any extra), and its extras."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: what the installed project's metadata says, from the same file
        meta = metadata.metadata("yamltrain")
        requirements, extras = meta.get_all("Requires-Dist") or [], set(meta.get_all("Provides-Extra") or [])
    else:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        groups = project.get("optional-dependencies", {})
        requirements = [*project["dependencies"], *(r for reqs in groups.values() for r in reqs)]
        extras = set(groups)
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}, extras


def _check_module(argv: list[str], what: str) -> None:
    """``python -m MODULE ARGS``."""
    module, args = argv[0], argv[1:]
    if module == "venv":
        return
    if module == "pytest":
        assert "pytest" in _declared()[0], f"{what}: pytest is not declared in pyproject.toml"
        return
    if module == "pipeline":
        from pipeline.cli import main

        _parses(lambda: main(args), what)
        return
    if module.startswith("stages."):
        path = module.replace(".", "/") + ".py"
        if path in EXAMPLE_PATHS.get(what.split(":", 1)[0], ()):
            return  # the stage a page shows how to write (test_example_paths_stay_examples)
        assert (REPO / path).is_file(), f"{what}: no module {module}"
        stage = importlib.import_module(module)
        _parses(lambda: stage.main(args), what)
        return
    pytest.fail(f"{what}: python -m {module} is none of ours (pipeline, stages.*) nor a tool we declare")


def _check_script(argv: list[str], what: str) -> None:
    """``python path/to/script.py ARGS``: a benchmark or script of this repository, parsed by its main."""
    path = REPO / argv[0]
    assert path.is_file(), f"{what}: {argv[0]} does not exist"
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "main"), f"{what}: {argv[0]} has no main(argv) to parse its arguments"
    _parses(lambda: module.main(argv[1:]), what)


def _check_python(argv: list[str], what: str) -> None:
    if argv[:1] == ["-m"]:
        _check_module(argv[1:], what)
    else:
        _check_script(argv, what)


def _check_dvc(argv: list[str], what: str) -> None:
    from dvc.cli import DvcParserError
    from dvc.cli.parser import get_main_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), _whole_options():
        try:
            get_main_parser().parse_args(argv)  # its own parser class: parsing runs nothing
        except (SystemExit, DvcParserError):
            pytest.fail(f"{what}: dvc does not take it: {err.getvalue().strip()}")


def _check_torchrun(argv: list[str], what: str) -> None:
    from torch.distributed.run import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()) as err, _whole_options():
            namespace = get_args_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{what}: torchrun does not take it: {err.getvalue().strip()}")
    assert namespace.module, f"{what}: the docs launch stages as modules (-m stages.NAME)"
    _check_module([namespace.training_script, *namespace.training_script_args], what)


def _check_pip(argv: list[str], what: str) -> None:
    assert argv[:1] == ["install"], f"{what}: only `pip install` is expected in the docs"
    extras = _declared()[1]
    for arg in argv[1:]:
        if match := re.fullmatch(r"\.\[(.+)\]", arg):
            missing = set(match.group(1).split(",")) - extras
            assert not missing, f"{what}: pyproject.toml declares no extra {sorted(missing)}"


def _check(command: Command) -> None:
    program, *args = command.argv
    what = str(command)
    if program in ("python", "python3"):
        _check_python(args, what)
    elif program == "dvc":
        _check_dvc(args, what)
    elif program == "torchrun":
        _check_torchrun(args, what)
    elif program == "pip":
        _check_pip(args, what)
    elif program in ("mlflow", "pytest", "ruff", "mypy"):
        assert program in _declared()[0], f"{what}: {program} is not declared in pyproject.toml"
    elif program in (".", "source"):
        assert args == [".venv/bin/activate"], f"{what}: only the venv the set-up command makes is sourced"
    elif program == "bash":
        assert (REPO / args[0]).is_file(), f"{what}: {args[0]} does not exist"
    else:
        assert program in SYSTEM_PROGRAMS, f"{what}: {program} is no program we ship, declare or expect"


def _pending(command: Command) -> str | None:
    return next((why for prefix, why in PENDING.items() if command.argv[: len(prefix)] == prefix), None)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.xfail(reason=_pending(c), strict=True)) if _pending(c) else c
        for c in ALL_COMMANDS
    ],
    ids=str,
)
def test_every_shown_command_parses(command: Command) -> None:
    _check(command)


def test_commands_are_found_in_every_doc() -> None:
    """The extraction itself: every page with a bash block yields commands, continuations joined."""
    shown = {c.doc for c in ALL_COMMANDS}
    assert {"README.md", "docs/extending.md", "docs/using-the-model.md", "docs/gpus-and-machines.md"} <= shown
    rdzv = [c for c in ALL_COMMANDS if c.argv[0] == "torchrun" and "--nnodes=2" in c.argv]
    assert rdzv and rdzv[0].argv[-2:] == ("-m", "stages.train")


def test_a_wrong_command_is_caught() -> None:
    """The checks can fail: a misspelt option, sub-command or script is reported, not skipped."""
    for argv in (
        ("python", "-m", "pipeline", "validat"),
        ("python", "-m", "pipeline", "predict", "x.png", "--thresold", "0.5"),
        ("python", "-m", "stages.train", "--param", "p.yaml"),  # an abbreviation argparse would take
        ("python", "-m", "stages.train", "--paramz", "p.yaml"),
        ("python", "benchmarks/throughput.py", "--smok"),
        ("python", "benchmarks/throughput.py", "--smoke", "--batch", "four"),
        ("python", "benchmarks/no_such_bench.py"),
        ("dvc", "exp", "run", "--queu"),
        ("dvc", "exp", "runn"),
        ("torchrun", "--nproc-per-nod=2", "-m", "stages.train"),
        ("torchrun", "--nproc_per_node=2", "-m", "stages.trian"),
        ("pip", "install", "-e", ".[devv]"),
        ("make", "all"),
    ):
        with pytest.raises((pytest.fail.Exception, AssertionError, ModuleNotFoundError)):
            _check(Command("test", 0, argv))


# --- paths --------------------------------------------------------------------------------------------


def _tracked_top_level() -> set[str]:
    """The first component of every tracked file (pipeline, docs, README.md, .dvc, ...)."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is on disk
        return {p.name for p in REPO.iterdir()} - {"outputs", ".venv", ".git"}
    return {line.split("/", 1)[0] for line in names.splitlines()}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _prose(text: str) -> str:
    """The text outside fenced blocks (where paths are named in backticks and links)."""
    return re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.M | re.S)


def _declared_output(path: str) -> bool:
    wanted = Path(path.rstrip("/"))
    declared = [p for paths in outputs.BY_STAGE.values() for p in paths]
    return any(wanted == p or p in wanted.parents or wanted in p.parents for p in declared)


def _named_paths(prose: str, tracked: set[str]) -> Iterator[str]:
    for span in re.findall(r"`([^`\n]+)`", prose):
        for token in span.split():
            token = token.strip(",;:()'\"").split(":", 1)[0] if not token.startswith("http") else ""
            if "/" not in token and token not in tracked:
                continue
            first = token.split("/", 1)[0]
            if first in tracked or first == "outputs":
                yield token


def _problems(doc: Path, tracked: set[str], text: str | None = None) -> list[str]:
    """What is wrong with the paths and links of ``doc`` (its ``text``, when given, instead of the file's)."""
    name = doc.relative_to(REPO).as_posix()
    examples = EXAMPLE_PATHS.get(name, set())
    prose = _prose(doc.read_text(encoding="utf-8") if text is None else text)
    problems = []
    for path in _named_paths(prose, tracked):
        if path in examples:
            continue
        if path.startswith("outputs/"):
            if not _declared_output(path):
                problems.append(f"{name}: `{path}` is no output pipeline/outputs.py declares")
        elif not glob.glob(str(REPO / re.sub(r"<[^>]*>", "*", path))):
            problems.append(f"{name}: `{path}` does not exist")
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        if not linked.exists():
            problems.append(f"{name}: link {target} points to nothing")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{name}: link {target}: no heading #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_named_path_exists(doc: Path) -> None:
    assert _problems(doc, _tracked_top_level()) == []


def test_example_paths_stay_examples() -> None:
    for doc, paths in EXAMPLE_PATHS.items():
        assert (REPO / doc).is_file()
        for path in paths:
            if path.startswith("outputs/"):
                assert not _declared_output(path), f"{doc}: the example output {path} is now a real one"
            else:
                assert not (REPO / path).exists(), f"{doc}: the example {path} exists; name the example otherwise"


def test_a_missing_path_or_anchor_is_caught() -> None:
    text = (
        "See `pipeline/no_such.py`, `outputs/train/nothing.json`, `configs/classification.yaml`,\n"
        "[x](models-and-training.md#no-such-heading), [y](missing.md) and [z](performance.md#throughput).\n"
    )
    problems = _problems(REPO / "docs" / "_probe.md", _tracked_top_level(), text)
    assert problems == [
        "docs/_probe.md: `pipeline/no_such.py` does not exist",
        "docs/_probe.md: `outputs/train/nothing.json` is no output pipeline/outputs.py declares",
        "docs/_probe.md: link models-and-training.md#no-such-heading: no heading #no-such-heading in "
        "models-and-training.md",
        "docs/_probe.md: link missing.md points to nothing",
    ]


# --- the README's two commands --------------------------------------------------------------------------


def _section_command(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return next(_fenced_blocks(section, "bash"))[1].strip()


def test_readme_commands_set_up_as_ci_does() -> None:
    """CI (.ci/run) runs, on a clean clone, the README's set-up and then its test command."""
    setup = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert _section_command("Run the pipeline (fresh machine, offline)") == f"{setup} && dvc repro"
    assert _section_command("Run the tests") == f"{setup} && pytest"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    steps = [*setup.split(" && "), "pytest"]
    assert [ci.index(step) for step in steps] == sorted(ci.index(step) for step in steps), ".ci/run: out of order"


def test_readme_is_short() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
