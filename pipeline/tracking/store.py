"""Where MLflow runs are kept: the tracking URI policy, shared by ``validate`` and the stages.

The default store is ``sqlite:///mlflow.db`` beside params.yaml *of the original repository*: DVC runs
``dvc exp run --temp`` and queued experiments in a throw-away copy under ``<repo>/.dvc/tmp/exps/``,
so a store resolved against the copy would vanish with it. ``MLFLOW_TRACKING_URI`` overrides
``tracking.uri``. A store that does not answer fails the stage before any training.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.schema import did_you_mean

if TYPE_CHECKING:
    from pipeline.config.params import Params

SQLITE_PREFIX = "sqlite:///"


ENV_URI = "MLFLOW_TRACKING_URI"


ENV_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


ARTIFACTS_DIR = "mlartifacts"  # beside a local sqlite store; ignored by git like mlflow.db


# The MLflow 3.17 UI takes its view (GenAI or model training) from this query, else from a per-browser
# toggle that starts on GenAI; an experiment's kind tag no longer decides it.
UI_VIEW_QUERY = "workflowType=machine_learning"


UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise


# scheme -> default SQLAlchemy driver module (None: no driver needed)
SCHEMES: dict[str, str | None] = {
    "sqlite": None,
    "http": None,
    "https": None,
    "postgresql": "psycopg2",
    "mysql": "MySQLdb",
    "mssql": "pyodbc",
    "databricks": None,
    "databricks-uc": None,
}


_DRIVER_MODULES = {"mysqldb": "MySQLdb", "mysqlconnector": "mysql.connector"}


_EXPS_DIR = (".dvc", "tmp", "exps")


def _file_store_allowed() -> bool:
    return os.environ.get(ENV_ALLOW_FILE_STORE, "").strip().lower() in ("1", "true", "yes")


def _scheme(uri: str) -> tuple[str, str]:
    """``(scheme, driver)``: ``postgresql+psycopg2://`` -> ``('postgresql', 'psycopg2')``; a bare
    ``databricks`` (a profile) is a scheme, a bare path is ``('', '')`` (a file store)."""
    if uri.lower() in ("databricks", "databricks-uc"):
        return uri.lower(), ""
    scheme, _, driver = urlsplit(uri).scheme.lower().partition("+")
    return scheme, driver


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be used as a tracking store, or None when it can."""
    parts = urlsplit(uri)
    scheme, driver = _scheme(uri)
    if scheme in ("", "file"):
        if _file_store_allowed():
            return None
        return (
            f"{uri!r} is a file store (./mlruns), which current MLflow refuses (maintenance mode; "
            f"{ENV_ALLOW_FILE_STORE}=true opts back in); use sqlite:///mlflow.db (the default) "
            "or a tracking server URL, and move old runs with `mlflow migrate-filestore`"
        )
    if scheme not in SCHEMES:
        return (
            f"unsupported tracking URI scheme {scheme!r}{did_you_mean(scheme, SCHEMES)} "
            f"(supported: {', '.join(SCHEMES)}, e.g. sqlite:///mlflow.db or http://host:5000)"
        )
    if scheme == "sqlite" and (parts.netloc or sqlite_path(uri) is None):
        return (
            f"{uri!r} names no database file; write sqlite:///mlflow.db (relative to params.yaml) "
            "or sqlite:////absolute/path/mlflow.db"
        )
    if scheme in ("http", "https") and not parts.netloc:
        return f"{uri!r} names no host (e.g. http://127.0.0.1:5000)"
    module = _DRIVER_MODULES.get(driver, driver) if driver else SCHEMES[scheme]
    if module and importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{uri!r} needs the database driver {module!r}, which is not installed"
    return None


def original_repo_root(repo_root: str | os.PathLike[str]) -> Path:
    """The real repository for ``repo_root``: itself, or, inside DVC's temporary experiment copy
    (``<repo>/.dvc/tmp/exps[/standalone]/tmpXXXX/...``, used by ``--temp`` and queued runs), the same
    directory in the repository that copy was made from."""
    root = Path(repo_root).resolve()
    parts = root.parts
    for i in range(len(parts) - len(_EXPS_DIR)):
        if parts[i : i + len(_EXPS_DIR)] != _EXPS_DIR:
            continue
        dvc_root = Path(*parts[:i])
        rest = parts[i + len(_EXPS_DIR) :]
        rest = rest[1:] if rest[:1] == ("standalone",) else rest
        if not rest:  # the exps folder itself is no workspace
            return root
        # the copy is a clone of the git work tree, so its inside maps onto the original git root
        git_root = next((p for p in (dvc_root, *dvc_root.parents) if (p / ".git").exists()), dvc_root)
        candidate = git_root.joinpath(*rest[1:])
        return candidate if candidate.is_dir() else dvc_root
    return root


def resolve_tracking_uri(uri: str, repo_root: str | os.PathLike[str]) -> str:
    """The store to use: ``MLFLOW_TRACKING_URI`` if set, else ``uri``; a relative sqlite (or allowed
    file-store) path is made absolute against the original repository's root; servers unchanged."""
    source = f"{ENV_URI}={os.environ[ENV_URI]!r}" if os.environ.get(ENV_URI) else "tracking.uri"
    uri = os.environ.get(ENV_URI) or uri
    reason = uri_problem(uri)
    if reason:
        raise PipelineError(f"{source}: {reason}")
    scheme = _scheme(uri)[0]
    if scheme == "sqlite":
        path = sqlite_path(uri)
        assert path is not None  # uri_problem refused the others
        if not path.is_absolute():
            path = original_repo_root(repo_root) / path
        return f"sqlite:///{path}"
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(uri).path) if scheme == "file" else uri).expanduser()
        path = path if path.is_absolute() else original_repo_root(repo_root) / path
        return path.as_uri()
    return uri.rstrip("/") if scheme in ("http", "https") else uri


def portable_uri(uri: str | None, repo_root: str | os.PathLike[str]) -> str | None:
    """``uri`` as a file in git may hold it: a store inside the repository relative to its root (the
    ``sqlite:///mlflow.db`` a user wrote), so the file is the same in every clone; others unchanged."""
    if uri is None or _scheme(uri)[0] not in ("sqlite", "file"):
        return uri
    path = sqlite_path(uri) if _scheme(uri)[0] == "sqlite" else Path(unquote(urlsplit(uri).path))
    root = original_repo_root(repo_root)
    if path is None or not path.is_absolute() or not path.is_relative_to(root):
        return uri
    relative = path.relative_to(root).as_posix()
    return f"sqlite:///{relative}" if _scheme(uri)[0] == "sqlite" else relative


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (PipelineError) when the store cannot be reached, instead of MLflow's minutes of
    retries in the middle of a run: a server must answer HTTP, a database must accept TCP."""
    parts = urlsplit(uri)
    scheme = _scheme(uri)[0]
    hint = f"start it or set tracking.uri / {ENV_URI}"
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # it answered: reachable (a proxy may not know /health)
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise PipelineError(f"tracking server {uri} is not reachable ({why}); {hint}") from None
    elif scheme in ("postgresql", "mysql", "mssql") and parts.hostname:
        port = parts.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme]
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            raise PipelineError(f"tracking database {parts.hostname}:{port} is not reachable ({exc}); {hint}") from None
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        assert path is not None  # uri_problem refused a sqlite URI without a file
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipelineError(f"tracking store {uri}: cannot create {folder} ({exc})") from None


def check_tracking(params: Params) -> list[Problem]:
    if not params.get("tracking.enabled"):
        return []
    problems = []
    reason = uri_problem(params.get("tracking.uri"))
    if reason:
        problems.append(Problem("tracking.uri", reason))
    env = os.environ.get(ENV_URI)
    if env and (env_reason := uri_problem(env)):
        problems.append(Problem("tracking.uri", f"overridden by {ENV_URI}={env!r}: {env_reason}"))
    return problems


def ui_link(uri: str, experiment_id: str) -> str:
    """Where an experiment opens in the MLflow UI in the model-training view (its runs table): the
    tracking server's page, or for a database store the page of ``mlflow ui`` started on it."""
    page = f"#/experiments/{experiment_id}?{UI_VIEW_QUERY}"
    if _scheme(uri)[0] in ("http", "https"):
        return f"{uri}/{page}"
    return f"{UI_DEFAULT}/{page} (after: mlflow ui --backend-store-uri {uri})"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative as written, or absolute), else None."""
    if not uri.lower().startswith(SQLITE_PREFIX):
        return None
    raw = unquote(uri[len(SQLITE_PREFIX) :])
    return Path(raw).expanduser() if raw and raw != ":memory:" else None
