"""A DVC remote for the cache, as the README's "Several GPUs" section sets it up: a stage output pushed to
a local-directory remote from one clone is pulled, byte for byte, into another clone without re-running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DVC = [sys.executable, "-m", "dvc"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "DVC_NO_ANALYTICS": "1",
}


def sh(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_output_pushed_to_a_local_remote_is_pulled_into_a_clone(tmp_path):
    repo, remote, clone = tmp_path / "repo", tmp_path / "remote", tmp_path / "clone"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh([*DVC, "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(
        f"stages:\n  make:\n    cmd: {sys.executable} -c \"import pathlib; p = pathlib.Path('outputs/make'); "
        "p.mkdir(parents=True, exist_ok=True); (p / 'weights.bin').write_bytes(bytes(range(256)) * 64)\"\n"
        "    outs:\n      - outputs/make/weights.bin\n"
    )
    sh([*DVC, "repro", "-q"], repo)
    sh([*DVC, "remote", "add", "-d", "local", str(remote)], repo)
    sh(["git", "add", "-A"], repo)  # the throw-away repo in tmp_path, not this one
    sh(["git", "commit", "-qm", "pipeline"], repo)
    sh([*DVC, "push", "-q"], repo)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push put nothing in the remote"

    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "outputs/make/weights.bin").exists()
    sh([*DVC, "pull", "-q"], clone)
    assert (clone / "outputs/make/weights.bin").read_bytes() == bytes(range(256)) * 64
    assert "up to date" in sh([*DVC, "status"], clone).lower()  # nothing to re-run
