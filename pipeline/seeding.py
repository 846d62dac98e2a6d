"""Seeds: one number (``train.seed``) makes the whole run repeatable, augmentation included.

Why a module of its own: imgaug augmenters draw from one global RNG (``imgaug.random``), and forked
DataLoader workers inherit a copy of it, so without reseeding every worker repeats the same
augmentation stream. :func:`worker_init_fn` reseeds each worker from ``torch.initial_seed()``,
which PyTorch sets to ``base_seed + worker_id`` with ``base_seed`` drawn from the DataLoader's
generator anew for every epoch: workers differ, epochs differ, and the stream is a function of the
generator's seed for a fixed worker count. Use :func:`loader_generator` for that generator.

imgaug takes seconds to import, so it is seeded only when already imported; otherwise its global RNG
is created later from numpy's global RNG (which is seeded here), which is just as repeatable.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

_UINT32 = 2**32


def _seed_imgaug(seed: int) -> bool:
    """Seed imgaug's global RNG in place (augmenters built with ``seed=None`` share it)."""
    if "imgaug.random" not in sys.modules:
        return False
    sys.modules["imgaug.random"].seed(seed)
    return True


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG, torch (CPU and CUDA) and imgaug's global RNG."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % _UINT32)
    torch.manual_seed(seed)
    _seed_imgaug(seed % _UINT32)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness derives from (seed, epoch) alone, so a resumed run replays it exactly."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def batch_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 32-bit seed for batch ``index`` of ``epoch``: what the training loop draws per batch (mixup and
    cutmix, :mod:`pipeline.augment.mix`) depends on (train.seed, epoch, index) alone, so a resumed run
    replays it; ``stream`` keeps one use's draws apart from another's."""
    return int(np.random.SeedSequence([epoch_seed(seed, epoch), int(index), int(stream)]).generate_state(1)[0])


def derived_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent 32-bit seeds from one (so numpy's and imgaug's streams do not coincide)."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(count)]


def seed_sample(seed: int, index: int) -> None:
    """Seed ``random``, numpy, torch and imgaug's global RNG from (``seed``, ``index``): what a DataLoader
    worker does before loading sample ``index`` of the epoch whose seed is ``seed``
    (:mod:`pipeline.training.feed`), so the sample's augmentation depends on nothing else."""
    py_seed, np_seed, torch_seed, imgaug_seed = np.random.SeedSequence([int(seed), int(index)]).generate_state(4)
    random.seed(int(py_seed))
    np.random.seed(int(np_seed))
    torch.default_generator.manual_seed(int(torch_seed))  # the CPU's: torch.manual_seed also visits CUDA's (70 us)
    _seed_imgaug(int(imgaug_seed))


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed ``random``, numpy and imgaug from this worker's torch seed.

    PyTorch reseeds torch (and, in recent versions, ``random`` and numpy) per worker, but not imgaug,
    whose global RNG every forked worker would otherwise copy: all workers, and every epoch, would
    then repeat one augmentation stream. All three are reseeded here, whatever the torch version.

    Each worker also runs torch on one thread: the training process sizes its own threads counting
    one core per worker (:mod:`pipeline.training.threads`). OpenCV's are left alone: resizing its
    pool in a forked worker deadlocks once the parent has used it (validation runs the augmenters)."""
    del worker_id  # already part of torch.initial_seed()
    torch.set_num_threads(1)
    py_seed, np_seed, imgaug_seed = derived_seeds(torch.initial_seed(), 3)
    random.seed(py_seed)
    np.random.seed(np_seed)
    _seed_imgaug(imgaug_seed)


def loader_generator(seed: int) -> torch.Generator:
    """The generator to give a DataLoader (``generator=``): shuffling and worker seeds follow ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator
