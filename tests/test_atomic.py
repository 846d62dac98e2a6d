"""Outputs appear whole or not at all; a killed writer's temporaries are ignored by git and removed by the
next write of the same output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pipeline.atomic import atomic_dir, atomic_path, write_json
from tests.conftest import REPO


def test_write_json_is_stable_and_complete(tmp_path):
    target = tmp_path / "sub" / "m.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_nan_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "partial").write_text("z")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_outputs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "m.json", {})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


# --- temporaries of killed writers -----------------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from pipeline.atomic import atomic_dir, atomic_path
out = Path(sys.argv[1])
with atomic_path(out / "model.onnx"), atomic_dir(out / "decode") as tmp:
    (tmp / "train").mkdir()
    (tmp / "train" / "shard.npy").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer_leftovers(out):
    """What a writer killed mid-write leaves in ``out``: its temporary file and folder (names)."""
    out.mkdir(exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], cwd=REPO)
    assert child.wait() == -signal.SIGKILL
    return child.pid, sorted(p.name for p in out.iterdir())


def test_a_killed_writers_temporaries_carry_its_pid_and_go_at_the_next_write(tmp_path):
    pid, left = killed_writer_leftovers(tmp_path)
    assert [re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".X.tmp", name) for name in left] == [
        f".decode.pid{pid}.X.tmp",
        f".model.onnx.pid{pid}.X.tmp",
    ]
    (tmp_path / f".decode.old-{pid}").mkdir()  # killed between its two renames
    (tmp_path / f".other.pid{pid}.abcdefgh.tmp").write_text("")  # another output's: left to its own writes
    write_json(tmp_path / "model.onnx", {})  # removes model.onnx's, and only those
    assert sorted(os.listdir(tmp_path)) == sorted(
        [left[0], f".decode.old-{pid}", f".other.pid{pid}.abcdefgh.tmp", "model.onnx"]
    )
    with atomic_dir(tmp_path / "decode") as tmp:
        (tmp / "f").write_text("x")
    assert sorted(os.listdir(tmp_path)) == [f".other.pid{pid}.abcdefgh.tmp", "decode", "model.onnx"]


def test_the_temporaries_of_running_writers_are_kept(tmp_path):
    target = tmp_path / "m.json"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".m.json.pid{other.pid}.abcdefgh.tmp"  # another process, still writing
        theirs.write_text("")
        with atomic_path(target) as mine:  # this process, still writing (a concurrent writer)
            write_json(target, {"a": 1})
            assert mine.exists() and theirs.exists()
            mine.write_text('{"a": 2}')
        assert json.loads(target.read_text()) == {"a": 2} and theirs.exists()
    finally:
        other.kill()
        other.wait()
    write_json(target, {})  # now that it has gone
    assert os.listdir(tmp_path) == ["m.json"]


def test_git_ignores_the_temporaries_and_nothing_else(tmp_path):
    pid, left = killed_writer_leftovers(tmp_path)
    temporaries = [f"outputs/{name}" for name in left] + [
        f"outputs/{left[0]}/train/shard.npy",
        f"outputs/.decode.old-{pid}",
        f"outputs/.decode.old-{pid}/index.json",
    ]
    others = [
        "outputs/.model.onnx",
        "notes.tmp",
        ".x.tmp",
        "outputs/.a.pid.tmp",
        "outputs/.cache.old",
        "params.yaml",
        "outputs/model.onnx.pid1.tmp",
    ]
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        input="\n".join(temporaries + others) + "\n",
    )
    assert checked.returncode in (0, 1), checked.stderr
    assert checked.stdout.splitlines() == temporaries
