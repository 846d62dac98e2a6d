"""Worker processes die with the process that started them, even one killed with SIGKILL: the decode
stage's pool (pipeline.data.decoded), the split stage's scan pool (pipeline.data.scan) and the training
DataLoader's workers (pipeline.training.inputs.make_loader), each started through the project's own code
in a child process and busy in a job when the child is killed."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# One child (torch imported once) starts the three kinds of worker, two of each, every one stuck in a
# minute-long job; the pools block in their threads, the DataLoader in the main thread.
CHILD = """
import threading, time
from pathlib import Path
import torch
from pipeline.data import decoded, scan
from pipeline.training.inputs import make_loader

def stuck(*args):
    time.sleep(60)
    return []

class Stuck(torch.utils.data.Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        return stuck()

scan.PROCESS_THRESHOLD, scan._scan_chunk = 0, stuck
scan.os.sched_getaffinity = lambda pid: {0, 1}  # two CPUs, so the scan forks its pool
threading.Thread(target=decoded._run, args=(stuck, [("train", 0, 1)] * 4, 2), daemon=True).start()
threading.Thread(target=scan.scan_files, args=(Path("."), [("x.png", False)] * 600), daemon=True).start()
next(iter(make_loader(Stuck(), {"workers": 2, "batch_size": 1}, torch.device("cpu"), shuffle=False)))
"""
WORKERS = 6
START_TIMEOUT_S = 60.0  # importing torch on a loaded machine
DEATH_TIMEOUT_S = 5.0


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for PID 1 to reap it counts: it holds nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_workers_die_with_a_parent_killed_by_sigkill():
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(workers) < WORKERS and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = psutil.Process(child.pid).children(recursive=True)
        assert len(workers) >= WORKERS, f"the child started {len(workers)} workers (exit code {child.poll()})"
        time.sleep(0.5)  # every worker past its initializer, in its job
        child.kill()
        child.wait()
        deadline = time.monotonic() + DEATH_TIMEOUT_S
        while time.monotonic() < deadline and not all(gone(w.pid) for w in workers):
            time.sleep(0.05)
        alive = [w.pid for w in workers if not gone(w.pid)]
        assert alive == [], f"workers {alive} outlived their parent"
    finally:
        for process in [*workers, child]:
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
