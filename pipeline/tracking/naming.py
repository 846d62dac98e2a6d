"""What a run is called and tagged with, and how keys and values are fitted to MLflow's limits
(repeated here so nothing imports mlflow, which takes seconds, to know them)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import importlib.metadata
import json
import os
import posixpath
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# MLflow's limits (mlflow.utils.validation); repeated here so nothing imports mlflow to know them.
MAX_PARAMS_TAGS_PER_BATCH = 100


MAX_METRICS_PER_BATCH = 1000


MAX_PARAM_VAL_LENGTH = 6000


MAX_TAG_VAL_LENGTH = 8000


MAX_KEY_LENGTH = 250


MAX_DATASET_DIGEST_SIZE = 36


MAX_INPUT_TAG_VALUE_SIZE = 500


TRUNCATED = "...[truncated]"


TRIAL_ENV = "YAMLTRAIN_TRIAL"  # set by python -m pipeline search for each trial (pipeline.search.runner)


def trial_info() -> dict[str, Any] | None:
    """The trial this process trains for, or None."""
    raw = os.environ.get(TRIAL_ENV)
    return json.loads(raw) if raw else None


def trial_tags() -> dict[str, str]:
    """MLflow tags that nest a trial's run under the study's run and name its study and number."""
    info = trial_info()
    if not info:
        return {}
    tags = {"search.study": str(info["study"]), "search.trial": str(info["number"]), "search.state": "running"}
    if info.get("parent_run_id"):
        tags["mlflow.parentRunId"] = str(info["parent_run_id"])
    return tags


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def default_tags(repo_root: str | os.PathLike[str], *, device: str | None = None) -> dict[str, str]:
    """Where a run came from: git commit (and dirtiness), the DVC experiment (``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV``, set by ``dvc exp run``), torch/CUDA versions, device, host, user.
    ``device`` defaults to what torch sees (CUDA or cpu) once torch is loaded."""
    root = Path(repo_root)
    tags = {
        "host": socket.gethostname(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:MAX_KEY_LENGTH],
    }
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (OSError, KeyError):
        pass
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(_git(root, "status", "--porcelain", "--untracked-files=no"))).lower()
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update(trial_tags())  # a search trial: its study, number and the study's parent run
    torch = sys.modules.get("torch")  # train/evaluate have it loaded; importing it costs seconds
    if torch is not None:
        tags["torch.version"], tags["torch.cuda"] = torch.__version__, str(torch.version.cuda)
        if device is None:
            device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    else:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            tags["torch.version"] = importlib.metadata.version("torch")
    if device is not None:
        tags["device"] = device
    return tags


def run_name_for(cfg: Mapping[str, Any], hint: str | None = None, *, now: _dt.datetime | None = None) -> str:
    """``tracking.run_name`` when set (the user's explicit choice), else the DVC experiment name,
    else ``<hint>-<YYYYmmdd-HHMMSS>`` (hint e.g. ``segmentation-unet``)."""
    if cfg.get("run_name"):
        return str(cfg["run_name"])
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    return f"{hint or 'run'}-{(now or _dt.datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def sanitize_key(key: str) -> str:
    """A key MLflow accepts: only ``/\\w.- :`` characters, no path tricks, at most 250 characters."""
    clean = re.sub(r"[^/\w.\- :]", "_", str(key)) or "_"
    if posixpath.normpath(clean) != clean or clean.startswith(("/", "..")) or clean == ".":
        clean = clean.replace("/", "_").strip(".") or "_"
    if len(clean) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(clean.encode()).hexdigest()[:8]  # keeps cut keys distinct
        clean = f"{clean[: MAX_KEY_LENGTH - 9]}_{digest}"
    return clean


def as_text(value: Any, limit: int = MAX_PARAM_VAL_LENGTH) -> str:
    """A param/tag value as YAML shows it (``true``, ``null``, ``[64, 64]``), cut to ``limit``
    characters with a visible marker."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED
