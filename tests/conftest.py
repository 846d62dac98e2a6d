"""Shared fixtures. ``mlflow_server``: a real ``mlflow server`` on 127.0.0.1 (SQLite backend, artifacts
in a temp dir), started once per session on a free port and always stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    backend = f"sqlite:///{root / 'mlflow.db'}"
    artifacts, log = root / "mlartifacts", root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers (CPU, slow stop)
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        uri = f"http://127.0.0.1:{port}"
        with open(log, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
                cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _healthy(uri):
            time.sleep(0.25)
        if proc.poll() is None and _healthy(uri):
            break
        _stop(proc)
    else:
        pytest.fail(f"mlflow server did not become healthy in {SERVER_START_TIMEOUT_S:.0f} s; "
                    f"its log:\n{log.read_text()[-3000:]}")
    try:
        yield MlflowServer(uri, backend, artifacts, log)
    finally:
        _stop(proc)
