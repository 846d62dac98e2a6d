"""``python -m pipeline.search.guard [--cpus 0,1] -- COMMAND...``: run one trial's command so that
nothing outlives the search.

The search starts this in a new session (its own process group). It asks the kernel to send it
SIGTERM when the search dies (even by ``kill -9``), pins itself and so the trial to its share of the
cores, runs the command in the same group, and on SIGTERM or SIGINT kills the whole group: ``dvc exp
run``, the stage it runs and that stage's DataLoader workers. Deliberately tiny (no torch, no
pipeline imports beyond :mod:`pipeline.processes`): it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pipeline.processes import die_with_parent


def _kill_group(signum: int, frame: object) -> None:
    del frame
    os.killpg(os.getpgid(0), signal.SIGKILL)  # every process of the trial, this one included
    sys.exit(128 + signum)


def main(argv: list[str]) -> int:
    parent = os.getppid()
    cpus: set[int] | None = None
    if argv[:1] == ["--cpus"]:
        cpus, argv = {int(c) for c in argv[1].split(",") if c}, argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m pipeline.search.guard [--cpus 0,1] -- COMMAND...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _kill_group)
    signal.signal(signal.SIGINT, _kill_group)
    die_with_parent(parent, signal.SIGTERM)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    return subprocess.call(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
