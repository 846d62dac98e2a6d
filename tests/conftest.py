"""Shared test helpers, imported as ``from tests.conftest import ...``:

- ``REPO``: the repository root;
- ``write_params``: a params file = the shipped params.yaml (or another base) with text replacements,
  dotted overrides and dropped keys;
- ``problems_by_key``: what validation reports for a params file, as {dotted key: message};
- ``make_workspace``: a tiny repo-like folder (generated data, a shrunk params.yaml, the split and
  model stages already run), the starting point of every stage-level test;
- ``train_workspace`` and ``train_history``: a workspace for the train stage (on the ``shapes_dataset``
  fixture) and the history.csv it writes;

- ``running_mlflow_server``: a real ``mlflow server`` on 127.0.0.1 (a free port) for a given backend
  store URI, artifacts in a given folder, always stopped;

- ``sh``, ``ran``, ``make_repo``, ``copy_repo``: commands in, and copies of, a git + DVC repository
  holding the project as a user's clone (tests/test_end_to_end.py, tests/search/);

and the session fixtures ``shapes_dataset`` (64 generated segmentation images), ``mlflow_server`` (that
server on a SQLite backend in a temp dir), ``postgres``: a real PostgreSQL server on 127.0.0.1 (a free
port, trust auth) with a database for an Optuna study and one for an MLflow backend store, skipped with
the reason where PostgreSQL is not installed or does not start, and ``reproduced_repo``: such a
repository after one `dvc repro`, committed, for tests to copy rather than re-run.

Tests marked ``slow`` (subprocesses, `dvc repro`, servers, training over a couple of seconds) are left
out of the edit-test loop ``pytest -m "not slow"``; ``pytest`` runs everything."""

from __future__ import annotations

import copy
import csv
import importlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PARAMS = REPO / "params.yaml"


# --- params files ------------------------------------------------------------------------------


def write_params(
    path: Path,
    base: Path | None = None,
    *,
    replace: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
    link: bool = False,
    **overrides: object,
) -> Path:
    """Write ``base`` (the shipped params.yaml unless given) to ``path``, edited, and return ``path``.

    ``replace`` edits the text: each old string must occur, its first occurrence is replaced, and
    everything else (comments, lines, columns) stays as in ``base``, for tests of reported positions.
    ``overrides`` set dotted keys (``**{"loss.name": "dice"}``; a key without a dot sets a whole
    section) and ``drop`` deletes dotted keys; both rewrite the file through YAML (comments go).
    ``link`` symlinks the repo's data/ and weights/ beside the file, so that the shipped relative paths
    (data.root, model.pretrained) still resolve."""
    text = (base or SHIPPED_PARAMS).read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    if overrides or drop:
        data = yaml.safe_load(text)
        for key, value in overrides.items():
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = copy.deepcopy(value)  # no shared objects: YAML would write them as aliases
        for key in drop:
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node[part]
            del node[last]
        text = yaml.safe_dump(data, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if link:
        for name in ("data", "weights"):
            if not (path.parent / name).exists():
                (path.parent / name).symlink_to(REPO / name, target_is_directory=True)
    return path


def problems_by_key(path: Path, prefix: str = "") -> dict[str, str]:
    """Validate ``path`` as ``python -m pipeline validate`` does and return {dotted key: message} for
    each problem whose key starts with ``prefix``; {} when the file is valid. Every such problem must
    be located (carry a line)."""
    from pipeline.config.errors import ConfigError
    from pipeline.config.params import load_params  # imported when used: collection stays light

    try:
        load_params(path)
    except ConfigError as exc:
        located = [p for p in exc.problems if p.key.startswith(prefix)]
        assert all(p.line is not None for p in located), located
        return {p.key: p.message for p in located}
    return {}


# --- workspaces --------------------------------------------------------------------------------

TINY = {  # the shipped pipeline shrunk to a CPU and seconds
    "data.root": "data",
    "data.image_size": [32, 32],
    "data.num_classes": None,
    "model.pretrained": False,
    "model.freeze": "none",
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.workers": 0,
    "train.device": "cpu",
    "scheduler.warmup.epochs": 0,
    "precision.dtype": "fp32",
    "evaluate.batch_size": 4,
    "evaluate.workers": 0,
    "evaluate.device": "cpu",
    "evaluate.overlays": 3,
    "tracking.enabled": False,
}
TINY_BY_TASK = {
    "segmentation": {
        "model.source": "unet",
        "model.name": "classic",
        "model.unet": {"base_channels": 4, "depth": 2, "upsampling": "bilinear"},
    },
    "classification": {
        "model.source": "timm",
        "model.name": "test_resnet",
        "loss": {"name": "cross_entropy", "params": {}, "terms": []},
    },
    "multilabel": {
        "model.source": "timm",
        "model.name": "test_resnet",
        "data.labels": "labels.csv",
        "loss": {"name": "asymmetric", "params": {}, "terms": []},
    },
}


def make_workspace(
    root: Path,
    *,
    task: str = "segmentation",
    dataset: Path | None = None,
    images: int | None = None,
    stages: Iterable[str] = ("split", "model"),
    **overrides: object,
) -> Path:
    """A tiny repo-like folder in ``root``; returns its params.yaml.

    The data in root/data is a copy of ``dataset`` or generated (32 px, seed 1): ``images`` images for
    segmentation (20), per class for classification (7), or multilabel scenes (30, labels.csv). params.yaml is the shipped file with
    ``TINY`` and ``TINY_BY_TASK[task]`` set, then ``overrides`` (dotted keys, as in ``write_params``).
    Then each of ``stages`` is run through its ``main``, in order, and must succeed."""
    from pipeline.data.synthetic import generate_classification, generate_multilabel, generate_segmentation

    if dataset is not None:
        shutil.copytree(dataset, root / "data")
    elif task == "segmentation":
        generate_segmentation(root / "data", n=images or 20, size=32, seed=1)
    elif task == "multilabel":
        generate_multilabel(root / "data", n=images or 30, size=32, seed=1)
    else:
        generate_classification(root / "data", n_per_class=images or 7, size=32, seed=1)
    path = write_params(root / "params.yaml", **{"data.task": task, **TINY, **TINY_BY_TASK[task], **overrides})
    for name in stages:
        assert importlib.import_module(f"stages.{name}").main(["--params", str(path)]) == 0, name
    return path


# --- a real MLflow tracking server ---------------------------------------------------------------

SERVER_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: ``uri`` for clients, where it keeps runs and artifacts."""

    uri: str
    backend_uri: str
    artifacts_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group, which only it and they are in)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:  # a throw-away test server: no need to wait out its shutdown
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextmanager
def running_mlflow_server(root: Path, backend: str) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port) keeping its runs in ``backend`` (any store
    URI: sqlite:///..., postgresql+psycopg://...) and its artifacts and log in ``root``; stopped on exit."""
    artifacts, log = root / "mlartifacts", root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers (CPU, slow stop)
    for _attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        uri = f"http://127.0.0.1:{port}"
        with open(log, "ab") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    backend,
                    "--artifacts-destination",
                    str(artifacts),
                ],
                cwd=root,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _healthy(uri):
            time.sleep(0.25)
        if proc.poll() is None and _healthy(uri):
            break
        _stop(proc)
    else:
        pytest.fail(
            f"mlflow server did not become healthy in {SERVER_START_TIMEOUT_S:.0f} s; "
            f"its log:\n{log.read_text()[-3000:]}"
        )
    try:
        yield MlflowServer(uri, backend, artifacts, log)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}") as server:
        yield server


# --- a real PostgreSQL server --------------------------------------------------------------------

POSTGRES_DATABASES = ("study", "mlflow")  # an Optuna study's storage, an MLflow server's backend store


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL on 127.0.0.1:``port``, user ``postgres`` (trust auth on loopback), holding
    ``POSTGRES_DATABASES``; ``url(name)`` is a SQLAlchemy URL for psycopg 3."""

    port: int
    root: Path
    log: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


def _postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (the newest version), or of an initdb on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: [int(part) for part in path.parts[-3].split(".") if part.isdigit()],
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL server for the session: initdb in a temp folder, the socket inside it,
    fsync off; run as the ``postgres`` system user when the tests run as root (postgres refuses root)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH; "
            "`apt-get install postgresql`, as .ci/run does)"
        )
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("the tests run as root and there is no `postgres` system user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))  # not under pytest's root-only (0700) temp dirs
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log)]
    try:
        init = subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb ({bin_dir}) failed: {(init.stderr or init.stdout).strip()[-500:]}")
        for _attempt in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            options = f"-h 127.0.0.1 -p {port} -k {root} -F -c full_page_writes=off"
            started = subprocess.run(
                [*pg_ctl, "-w", "-t", "60", "-o", options, "start"], cwd=root, capture_output=True, text=True
            )
            if started.returncode == 0:
                break
        else:
            why = log.read_text()[-1500:] if log.exists() else started.stderr
            pytest.skip(f"the PostgreSQL server ({bin_dir}) did not start: {why}")
        try:
            for name in POSTGRES_DATABASES:
                subprocess.run(
                    [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                    check=True,
                    capture_output=True,
                )
            yield Postgres(port, root, log)
        finally:
            subprocess.run([*pg_ctl, "stop", "-m", "immediate"], cwd=root, capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the train stage's workspaces (tests/stages/test_train.py, test_distributed.py) ---------------

TRAIN = {"model.unet.base_channels": 8, "optimizer.lr": 0.01, "train.epochs": 3}  # over make_workspace


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 generated 32 px segmentation images (seed 5): 45 train, enough for two ranks of 22."""
    from pipeline.data.synthetic import generate_segmentation

    root = tmp_path_factory.mktemp("data") / "shapes"
    generate_segmentation(root, n=64, size=32, seed=5)
    return root


def train_workspace(root: Path, dataset: Path, **overrides: object) -> Path:
    """``make_workspace`` on a copy of ``dataset`` with ``TRAIN`` and then ``overrides`` set: split and
    model have run, train is next. Returns its params.yaml."""
    return make_workspace(root, dataset=dataset, **{**TRAIN, **overrides})


def train_history(params: Path) -> list[dict[str, float]]:
    """The rows of the train stage's history.csv in the workspace of ``params``, as numbers."""
    with open(params.parent / "outputs/train/history.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


# --- a git + DVC repository holding the project (tests/test_end_to_end.py, tests/search/) --------

BIN = Path(sys.executable).parent
REPRODUCED_IMAGES = 24  # enough for a 70/15/15 split with every split non-empty; each trial trains on it


def dvc_env() -> dict[str, str]:
    """The environment of commands run in such a repository: this interpreter's scripts (dvc) first on
    PATH, a git identity, no DVC analytics, no tracking URI from outside."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e",
        DVC_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd`` with ``dvc_env``; with ``check``, a failure is an AssertionError showing
    its output."""
    result = subprocess.run(cmd, cwd=cwd, env=dvc_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# dvc.yaml's stages in the order `dvc repro` runs them from scratch
EVERY_STAGE = ["validate", "split", "decode", "augment", "model", "train", "preview", "evaluate", "export"]


def ran(output: str) -> list[str]:
    """The stages `dvc repro` executed, in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def tiny_params(path: Path) -> Path:
    """The shipped params.yaml shrunk to seconds at ``path``: few epochs, tiny images and model, no
    workers; edited as text, so that its comments and layout stay for the tests to edit."""
    data = yaml.safe_load(SHIPPED_PARAMS.read_text())
    return write_params(
        path,
        replace={
            f"  epochs: {data['train']['epochs']}": "  epochs: 2",
            "  workers: auto ": "  workers: 0    ",
            f"  image_size: {_flow(data['data']['image_size'])}": "  image_size: [32, 32]",
            f"  batch_size: {data['train']['batch_size']}\n": "  batch_size: 8\n",
            f"base_channels: {data['model']['unet']['base_channels']}": "base_channels: 4",
            f"pretrained: {data['model']['pretrained']}": "pretrained: false",  # the shipped weights fit the default size
        },
    )


def _flow(value: object) -> str:
    return "[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)


def make_repo(ws: Path, *, images: int = 40) -> Path:
    """A git + DVC repository at ``ws`` holding the project (code, dvc.yaml, its DVC settings), generated
    segmentation data and the tiny params.yaml, committed: what a user's clone looks like."""
    from pipeline.data.synthetic import generate_segmentation

    ws.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages", "schemas", "weights", "plots"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, ws / name)
    params = yaml.safe_load(SHIPPED_PARAMS.read_text())
    generate_segmentation(ws / params["data"]["root"], n=images, size=32, seed=3)
    tiny_params(ws / "params.yaml")
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc/config", ws / ".dvc/config")  # the project's settings and plot templates
    shutil.copytree(REPO / ".dvc/plots", ws / ".dvc/plots")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "init")
    return ws


LOCAL_STATE = {  # what copy_repo leaves out, by folder relative to the repository
    Path(".dvc"): {"tmp"},  # DVC's per-checkout state: locks, hashes keyed by inode, the experiment queue
    Path("."): {"mlflow.db", "mlartifacts"},  # the local MLflow store names its artifact folder by absolute path
}


def copy_repo(source: Path, target: Path) -> Path:
    """A copy of the repository ``source`` at ``target`` (not existing yet): its git history, DVC cache,
    dvc.lock and outputs, as if cloned and reproduced there, in milliseconds instead of a `dvc repro`.
    ``LOCAL_STATE`` is left out (DVC and MLflow make it anew), and a symlink into ``source`` (a DVC cache
    link) points to the same place in ``target``. Returns ``target``."""

    def local_state(folder: str, names: list[str]) -> set[str]:
        return LOCAL_STATE.get(Path(folder).relative_to(source), set()) & set(names)

    shutil.copytree(source, target, symlinks=True, ignore=local_state)
    for folder, dirs, files in os.walk(target):
        for name in dirs + files:
            link = Path(folder) / name
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(source):
                pointed = target / Path(os.readlink(link)).relative_to(source)
                link.unlink()
                link.symlink_to(pointed)
    return target


@dataclass(frozen=True)
class ReproducedRepo:
    """``make_repo`` after its first `dvc repro`, committed (dvc.lock included): ``root``, and
    ``first_repro``, the output of that `dvc repro`."""

    root: Path
    first_repro: str


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> ReproducedRepo:
    """One `dvc repro` of every stage for the session: tests start from ``copy_repo`` of it (a search's
    trials then re-run only what their params change) and leave it as it is. Under pytest-xdist the
    workers share one: the first to need it builds it (under a file lock) in the folder above every
    worker's temp folder, the others wait and reuse it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-of-USER/pytest-N: the run's folder, above each worker's popen-gwN
    folder = shared / "reproduced"
    with _locked(shared / "reproduced.lock"):
        record = folder / "first_repro.txt"
        if not record.exists():
            root = make_repo(folder / "repo", images=REPRODUCED_IMAGES)
            first = sh(root, "dvc", "repro")
            sh(root, "git", "add", "-A")
            sh(root, "git", "commit", "-qm", "reproduced")
            record.write_text(first.stdout)
    return ReproducedRepo(folder / "repo", record.read_text())


@pytest.fixture
def clone(reproduced_repo: ReproducedRepo, tmp_path: Path) -> Path:
    """A copy of the reproduced repository of this test's own: up to date and committed."""
    return copy_repo(reproduced_repo.root, tmp_path / "repo")


def edit_params(ws: Path, old: str, new: str) -> None:
    """Replace the text ``old`` (it must occur) by ``new`` in ``ws``'s params.yaml, as a user edits it."""
    write_params(ws / "params.yaml", ws / "params.yaml", replace={old: new})


def commit_all(ws: Path) -> None:
    """``git add -A`` and commit in ``ws`` (nothing to commit is fine)."""
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "step", check=False)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created) while the block runs: one process at a time."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files run heaviest first: by the whole-pipeline runs their tests declare (``pipeline_runs(n)``),
    then the other files holding slow tests, then the quick ones. With the two workers of ``-n 2 --dist
    loadfile`` the long dvc files start at once and the quick files fill in beside them, instead of one
    long file starting last and running alone. Order within a file stays."""

    def weight(item: pytest.Item) -> int:
        runs = item.get_closest_marker("pipeline_runs")
        if runs is not None:
            return 1 + int(runs.args[0])
        return 1 if item.get_closest_marker("slow") is not None else 0

    by_file: dict[str, int] = {}
    for item in items:
        where = item.nodeid.split("::")[0]
        by_file[where] = max(by_file.get(where, 0), weight(item))
    items.sort(key=lambda item: -by_file[item.nodeid.split("::")[0]])  # stable: a file's tests keep their order
