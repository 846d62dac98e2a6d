"""CPU threads of a training run (``train.threads``): how many torch may use, so that runs sharing
cores do not oversubscribe them.

Why: torch starts one OpenMP thread per core, and libgomp's threads spin-wait between parallel
regions. When more threads than cores are runnable (a second training on the same cores, or this
run's own DataLoader workers), the spinning threads take the cores from the ones with work: on 2
cores, two co-scheduled trainings with torch's default threads ran at about a tenth of a lone run's
speed each (``benchmarks/shared_cpu.py`` measures it).

``auto`` gives the training process the cores it may run on (its CPU affinity, which ``taskset``,
cgroups' cpusets and schedulers set), shared with the other processes torchrun started on this node,
less one per DataLoader worker (each worker runs single-threaded: :func:`pipeline.seeding.worker_init_fn`),
and at least one. ``OMP_WAIT_POLICY=PASSIVE`` stops the spinning altogether, but only when set in the
environment before torch is imported (libgomp reads it once, when it loads).
"""

from __future__ import annotations

import os

import torch

AUTO = "auto"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(setting: int | str, *, cores: int, workers: int, local_processes: int = 1) -> int:
    """torch's intra-op threads for ``train.threads``: an explicit number as given; ``auto``: this
    process's share of ``cores`` among ``local_processes`` (torchrun's ranks on this node), less one
    per DataLoader worker, at least one."""
    if setting != AUTO:
        return int(setting)
    share = cores // max(1, local_processes)
    return max(1, share - workers)


MAX_AUTO_WORKERS = 16  # past this, more workers mostly add fork time and memory


def resolve_workers(setting: int | str, *, cores: int | None = None, local_processes: int | None = None) -> int:
    """DataLoader workers for ``train.workers`` / ``evaluate.workers``: a number as given; ``auto``: one per
    core this process may use, shared among torchrun's processes on this node, at most 16."""
    if setting != AUTO:
        return int(setting)
    cores = available_cores() if cores is None else cores
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_processes is None else local_processes
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, local)))


def apply_threads(setting: int | str, *, workers: int | str) -> int:
    """Size torch's thread pools for ``train.threads`` in this process; returns the intra-op count.

    The inter-op pool can only be sized before its first use (and once per process): later calls
    leave it as it is."""
    threads = resolve_threads(
        setting,
        cores=available_cores(),
        workers=resolve_workers(workers),
        local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already used or already set: torch refuses, and that pool is small anyway
        pass
    return threads
