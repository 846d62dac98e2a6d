"""Benchmark: how many times the decoded cache is stored on disk, per DVC cache link type.

For each ``--types`` value (a ``cache.type`` as .dvc/config writes it; ``project`` is the repository's
own .dvc/config), builds a temporary git + DVC repository holding this project (code, dvc.yaml, its
DVC settings), ``--images`` generated segmentation images of ``--size`` px and params.yaml pointing at
them, runs ``dvc repro decode`` (validate, split, decode), and reports:

- ``workspace``: the bytes of outputs/decode (its files' sizes, a symlink's as its target's);
- ``cache``: the bytes of .dvc/cache (its files' sizes);
- ``disk``: what both take on disk, hardlinks counted once (``du -s -B1 outputs/decode .dvc/cache``);
- ``multiplier``: disk / workspace, so 2.0 = the decoded cache stored twice, 1.0 = once;
- the link DVC made (``reflink or copy``, ``hardlink``, ``symlink``: inode link count and file type of
  a shard);
- after ``--edits`` content edits (one image redrawn each time, then ``dvc repro decode``): the cache's
  growth, since DVC keeps every shard version it has seen until ``dvc gc``.

The temporary repositories live under ``--dir`` (default: a temp folder on the file system of the
system temp dir; link types depend on it: pass a folder on the disk your project lives on).

Not a test: run it by hand.

    python benchmarks/cache_disk.py
    python benchmarks/cache_disk.py --images 4000 --size 64 --types "reflink,copy" project --json cache.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline.data.decoded import human_bytes  # noqa: E402
from pipeline.data.synthetic import generate_segmentation  # noqa: E402

DVC_DEFAULT = "reflink,copy"  # what DVC uses without a cache.type
PROJECT = "project"  # the repository's .dvc/config as committed


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@e", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@e")
    return env


def sh(cwd: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def make_repo(ws: Path, data: Path, size: int, cache_type: str) -> None:
    """The project, a copy of the generated ``data`` and its params.yaml, committed, with ``cache_type``."""
    for name in ("pipeline", "stages", "schemas", "plots"):
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, ws / name)
    shutil.copytree(data, ws / "data")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(root="data", image_size=[size, size])
    params["model"]["pretrained"] = False
    params["tracking"]["enabled"] = False
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc/config", ws / ".dvc/config")
    if cache_type != PROJECT:
        sh(ws, "dvc", "config", "cache.type", cache_type)
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "init")


def file_bytes(folder: Path) -> int:
    """The sizes of the files under ``folder`` (a symlink counts as the file it points to: the data)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def disk_bytes(ws: Path, *folders: str) -> int:
    """What ``folders`` take on disk together, each inode once: du counts a hardlinked file once across
    all its arguments."""
    return int(sh(ws, "du", "-s", "-c", "-B1", *folders).splitlines()[-1].split()[0])


def link_kind(ws: Path) -> str:
    """How DVC put a decoded shard into the workspace."""
    shard = next(p for p in sorted((ws / "outputs/decode").rglob("*.npy")))
    if shard.is_symlink():
        return "symlink"
    return "hardlink" if shard.stat().st_nlink > 1 else "reflink or copy"


def measure(ws: Path) -> dict[str, Any]:
    workspace = file_bytes(ws / "outputs/decode")
    cache = file_bytes(ws / ".dvc/cache")
    disk = disk_bytes(ws, "outputs/decode", ".dvc/cache")
    return {
        "workspace": workspace,
        "cache": cache,
        "disk": disk,
        "multiplier": round(disk / workspace, 3),
        "link": link_kind(ws),
        "writable": bool(next((ws / "outputs/decode").rglob("*.npy")).stat().st_mode & 0o222),  # not os.access: root
    }


def cache_type_of(ws: Path) -> str:
    """The cache.type in effect, as .dvc/config spells it (`dvc config` prints a list as Python's repr)."""
    shown = sh(ws, "dvc", "config", "cache.type").strip()
    return ",".join(ast.literal_eval(shown)) if shown.startswith("[") else shown


def edit_image(ws: Path, number: int) -> None:
    """Redraw one training image's pixels (a content edit: its shard's bytes change)."""
    train = json.loads((ws / "outputs/split/manifest.json").read_text())["splits"]["train"]
    path = ws / "data" / train[number % len(train)]["image"]
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[:, :, number % 3] = 255 - pixels[:, :, number % 3]
    Image.fromarray(pixels).save(path)


def run(cache_type: str, data: Path, size: int, edits: int, root: Path) -> dict[str, Any]:
    ws = Path(tempfile.mkdtemp(prefix="cache-disk-", dir=root))
    try:
        make_repo(ws, data, size, cache_type)
        sh(ws, "dvc", "repro", "decode")
        result = {"cache_type": cache_type_of(ws), **measure(ws)}
        after = result
        for number in range(edits):
            edit_image(ws, number)
            sh(ws, "dvc", "repro", "decode")
            after = measure(ws)
        if edits:
            result["after_edits"] = {
                "edits": edits,
                "cache": after["cache"],
                "disk": after["disk"],
                "multiplier": after["multiplier"],
            }
        return result
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="generated segmentation images (default 3000)")
    parser.add_argument("--size", type=int, default=64, help="data.image_size and the images' size in px")
    parser.add_argument("--types", nargs="+", default=[DVC_DEFAULT, PROJECT], help="cache.type values to compare")
    parser.add_argument("--edits", type=int, default=1, help="content edits after the first decode (default 1)")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary repositories go")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cache-disk-", dir=args.dir))
    try:
        data = root / "data"
        generate_segmentation(data, n=args.images, size=args.size, seed=0)
        results = [run(t, data, args.size, args.edits, root) for t in args.types]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.images} images of {args.size} px, decoded (train + val) by `dvc repro decode`:")
    for r in results:
        line = (
            f"  cache.type {r['cache_type']:<32} outputs/decode {human_bytes(r['workspace']):>9}, "
            f".dvc/cache {human_bytes(r['cache']):>9}, on disk {human_bytes(r['disk']):>9} = "
            f"{r['multiplier']:.2f}x ({r['link']}{'' if r['writable'] else ', read-only'})"
        )
        if "after_edits" in r:
            grown = r["after_edits"]["cache"] - r["cache"]
            edited = r["after_edits"]
            line += (
                f"; {edited['edits']} image edit(s) add {human_bytes(grown)} to .dvc/cache "
                f"(on disk {human_bytes(edited['disk'])} = {edited['multiplier']:.2f}x until `dvc gc`)"
            )
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "size": args.size, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
