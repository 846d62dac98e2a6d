"""Worker processes that die with the process that started them.

A pool worker (the decode stage's, the split stage's scan) or a DataLoader worker outlives a parent
killed with SIGKILL: it is re-parented to PID 1 and keeps running, holding hundreds of MB and a shard
open. On Linux the kernel can signal a process when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
:func:`die_with_parent` asks for SIGKILL, then checks that the parent has not already died between
the fork and that call. Elsewhere it does nothing.

The signal follows the *thread* that forked the worker: workers must be started from a thread that
lives as long as they do (here they are all started from the stage's main thread).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` (SIGKILL) to this process when its parent dies; exit now if the
    parent (``parent``, the pid that started this worker) is already gone. A no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return  # not fatal: the worker then only lacks the guarantee
    if os.getppid() != parent and not process_running(parent):  # it died before the prctl: no signal will come
        os._exit(1)
    # (A parent pid other than ``parent`` that is running: started by a forkserver, which the kernel
    # now watches instead; it exits with ``parent``, and its workers then with it.)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's process counts: what it holds is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dying_with_parent(init: Callable[..., Any] | None = None) -> Callable[..., None]:
    """An initializer for worker processes started by this process (a ``ProcessPoolExecutor``'s
    ``initializer``, a DataLoader's ``worker_init_fn``) that calls :func:`die_with_parent`, then
    ``init`` with the initializer's arguments. Picklable, so it works with the spawn start method."""
    return functools.partial(_initialize, os.getpid(), init)


def _initialize(parent: int, init: Callable[..., Any] | None, *args: Any) -> None:
    die_with_parent(parent)
    if init is not None:
        init(*args)
