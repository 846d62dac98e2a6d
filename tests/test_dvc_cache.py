"""The decoded cache is stored once: .dvc/config's cache.type makes `dvc repro` hardlink cached outputs
to .dvc/cache (benchmarks/cache_disk.py measures the disk at thousands of images). In a real git + DVC
repository (tests/test_end_to_end.py's) through the decode stage."""

from __future__ import annotations

import stat

import pytest

from tests.test_end_to_end import make_repo, ran, sh


def writable(path) -> bool:
    """Whether anyone may write ``path`` by its mode bits (os.access says yes to root whatever they are)."""
    return bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _du(ws, *paths: str) -> int:
    """Bytes on disk of ``paths`` together, each inode once (du counts a hardlinked file once)."""
    return int(sh(ws, "du", "-s", "-c", "-B1", *paths).stdout.splitlines()[-1].split()[0])


@pytest.mark.slow  # three stages through dvc
def test_the_decoded_cache_is_stored_once_and_unprotect_gives_a_writable_copy(tmp_path):
    ws = make_repo(tmp_path)
    assert ran(sh(ws, "dvc", "repro", "decode").stdout) == ["validate", "split", "decode"]
    decode = ws / "outputs/decode"
    shards = sorted(decode.rglob("*.npy"))
    assert len(shards) == 4  # images and targets of train and val
    assert all(p.stat().st_nlink == 2 and not writable(p) for p in shards)  # linked, read-only
    files = sum(p.stat().st_size for p in decode.rglob("*") if p.is_file())
    folders = sum(d.stat().st_blocks * 512 for d in [decode, *decode.rglob("*")] if d.is_dir())
    # outputs/decode adds only its folders to what .dvc/cache holds: its files are the cache's
    assert _du(ws, "outputs/decode", ".dvc/cache") - _du(ws, ".dvc/cache") == folders < files

    sh(ws, "dvc", "unprotect", "outputs/decode")  # before a hand edit: a private, writable copy
    assert all(p.stat().st_nlink == 1 and writable(p) for p in shards)
    assert ran(sh(ws, "dvc", "repro", "decode").stdout) == []  # the same bytes: nothing re-runs
    sh(ws, "dvc", "checkout", "--relink", "outputs/decode")
    assert all(p.stat().st_nlink == 2 for p in shards)
