"""train.threads: torch's threads sized to the cores this process may use, shared with its DataLoader
workers (one thread each) and torchrun's other ranks on the node; an explicit number as given; a bad
value refused by validate at its line."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.seeding import worker_init_fn
from pipeline.training.threads import apply_threads, resolve_threads
from tests.conftest import problems_by_key, write_params


@pytest.fixture
def restore_threads():
    """apply_threads changes this (pytest's) process: put torch's thread count back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "setting, cores, workers, local, expected",
    [
        ("auto", 2, 0, 1, 2),  # no workers: every core this process may use
        ("auto", 2, 2, 1, 1),  # the shipped 2 workers on 2 cores: one thread left, never 0
        ("auto", 16, 2, 1, 14),  # a core per worker, the rest for the training process
        ("auto", 16, 2, 4, 2),  # torchrun's 4 ranks share the 16 cores first: 4 each, less 2 workers
        ("auto", 1, 4, 1, 1),
        (3, 2, 2, 1, 3),  # a number is taken as given, even past the cores
        (1, 64, 0, 1, 1),
    ],
)
def test_resolve_threads(setting, cores, workers, local, expected):
    assert resolve_threads(setting, cores=cores, workers=workers, local_processes=local) == expected


def test_auto_counts_the_affinity_not_the_machine(monkeypatch, restore_threads):
    """A process pinned to 6 cores (taskset, a cpuset) with 2 workers gets 4 threads, whatever
    os.cpu_count() says; under torchrun with 2 ranks on the node, 6 // 2 - 2 = 1."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert apply_threads("auto", workers=2) == 4 and torch.get_num_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert apply_threads("auto", workers=2) == 1 and torch.get_num_threads() == 1
    assert apply_threads(3, workers=2) == 3 and torch.get_num_threads() == 3


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "0 is less than the minimum of 1"),
        ("many", "expected 'auto' or integer, got string 'many'"),
        ("1.5", "expected 'auto' or integer, got number 1.5"),
    ],
)
def test_bad_threads_refused_at_its_line(tmp_path, value, message):
    path = write_params(tmp_path / "params.yaml", replace={"  threads: auto": f"  threads: {value}"}, link=True)
    assert problems_by_key(path, "train.threads") == {"train.threads": message}


def test_shipped_default_is_auto(tmp_path):
    assert problems_by_key(write_params(tmp_path / "params.yaml", link=True), "train") == {}


class ThreadCounts(Dataset):
    """Each sample: the torch threads of the worker that loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return torch.get_num_threads()


def undo_torch_worker_setting(worker_id: int) -> None:
    """What a forked worker would run on without torch's own per-worker setting: the parent's 3."""
    torch.set_num_threads(3)


def undo_then_worker_init(worker_id: int) -> None:
    undo_torch_worker_setting(worker_id)
    worker_init_fn(worker_id)


def test_a_worker_runs_on_one_thread(restore_threads):
    """The training process counts one core per worker, so each worker keeps to one torch thread,
    even with torch's own per-worker setting undone (it sets 1 before calling worker_init_fn)."""
    torch.set_num_threads(3)
    loader = DataLoader(ThreadCounts(), num_workers=2, worker_init_fn=undo_torch_worker_setting)
    assert [int(n) for n in loader] == [3, 3, 3, 3]  # the undoing works: the check below can fail
    loader = DataLoader(ThreadCounts(), num_workers=2, worker_init_fn=undo_then_worker_init)
    assert [int(n) for n in loader] == [1, 1, 1, 1]
