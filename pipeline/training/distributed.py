"""DistributedDataParallel plumbing for the train stage: one process per device, launched by torchrun.

``torchrun --nproc_per_node=N -m stages.train`` starts N copies of the stage; each reads its rank from
the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). Without
those variables the stage is a single process exactly as before (:data:`SINGLE`). Why only rank 0
writes: every output (checkpoint, history, metrics, best weights, MLflow run) must exist once, and the
other ranks hold the same weights anyway (DDP keeps them identical).

Failure handling: a Python error on one rank makes that process exit non-zero, and torchrun's agent
then terminates the others. Conditions every rank can observe (a non-finite loss) are agreed on with
one small all-reduce (:func:`any_rank`) so all ranks stop together with the same message instead of
one rank waiting in a collective that will never come.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from pipeline.config.errors import PipelineError
from pipeline.models.finetune import convert_sync_batchnorm

DEBUG_SAMPLES_ENV = "YAMLTRAIN_DEBUG_SAMPLES"  # a folder: each rank writes the indices it trains on


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job: ``world_size`` 1 means a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def launched_world_size(env: Mapping[str, str] | None = None) -> int:
    """The ``WORLD_SIZE`` torchrun set (1 when not launched by torchrun)."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1"))


def check_devices(devices: int | str, env: Mapping[str, str] | None = None) -> None:
    """``train.devices`` against how the stage was launched: N > 1 needs torchrun with N processes."""
    env = os.environ if env is None else env
    if isinstance(devices, str):  # "auto", the one word the schema allows
        return
    world = launched_world_size(env)
    per_node = int(env.get("LOCAL_WORLD_SIZE", world))
    if world == 1 and devices > 1:
        raise PipelineError(
            f"train.devices is {devices}: launch the stage with torchrun, one process per device: "
            f"`torchrun --nproc_per_node={devices} -m stages.train` (or set train.devices: auto)"
        )
    if world > 1 and devices != per_node:
        raise PipelineError(
            f"train.devices is {devices} but torchrun started {per_node} process(es) on this node; "
            f"use --nproc_per_node={devices} or set train.devices: auto"
        )


def setup(devices: int | str, device: torch.device) -> tuple[Context, torch.device]:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) and pick this rank's device.

    Returns ``(SINGLE, device)`` unchanged when not launched by torchrun."""
    check_devices(devices)
    if launched_world_size() == 1:
        return SINGLE, device
    ctx = Context(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=launched_world_size(),
    )
    if device.type == "cuda":
        if device.index is not None:
            raise PipelineError(
                f"train.device is {device}, but under torchrun each rank uses cuda:LOCAL_RANK; "
                "set train.device: auto or cuda"
            )
        if ctx.local_rank >= torch.cuda.device_count():
            raise PipelineError(
                f"rank {ctx.rank}: LOCAL_RANK {ctx.local_rank} but only "
                f"{torch.cuda.device_count()} CUDA device(s) on this node"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return ctx, device


def teardown(ctx: Context) -> None:
    """Leave the process group. No barrier: rank 0 may still be uploading to MLflow, and torchrun
    waits for every rank to exit anyway."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(net: torch.nn.Module, ctx: Context, device: torch.device, *, sync_batchnorm: bool) -> torch.nn.Module:
    """``net`` in DistributedDataParallel (its BatchNorms synchronised when asked); unchanged when single."""
    if not ctx.enabled:
        return net
    if sync_batchnorm:
        if device.type != "cuda":
            raise PipelineError(
                "train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                "kernel); set it to false for CPU runs"
            )
        net = convert_sync_batchnorm(net)  # frozen BatchNorms stay pinned in eval
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def maybe_no_sync(net: torch.nn.Module, apply: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` on micro-batches that do not step: gradients accumulate locally and are
    all-reduced once, on the stepping micro-batch."""
    if not apply and isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


def train_sampler(dataset: Sized, ctx: Context, *, seed: int) -> DistributedSampler | None:
    """This rank's shuffled share of the training set (call ``set_epoch`` every epoch); None when single.

    The shares are disjoint: the few samples left over by ``len % world_size`` are dropped (a different
    few each epoch), as the loader drops its last incomplete batch anyway, rather than padded with
    duplicates."""
    if not ctx.enabled:
        return None
    return DistributedSampler(
        dataset,  # type: ignore[arg-type]  # torch annotates Dataset; the sampler reads only len()
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order: an evaluation share without the padding
    DistributedSampler adds (duplicated samples would bias the all-reduced metrics)."""

    def __init__(self, length: int, ctx: Context):
        self.indices = list(range(ctx.rank, length, ctx.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset: Sized, ctx: Context) -> ShardSampler | None:
    return ShardSampler(len(dataset), ctx) if ctx.enabled else None


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op when single); returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def earliest_step(bad_step: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The earliest non-finite step over all ranks (-1: none), so every rank stops on the same one."""
    if not ctx.enabled:
        return bad_step
    never = torch.iinfo(torch.long).max
    earliest = torch.where(bad_step < 0, never, bad_step)
    dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
    return torch.where(earliest == never, -1, earliest)


def reduce_meter(meter: Any, total: torch.Tensor, count: int, ctx: Context) -> tuple[torch.Tensor, int]:
    """Sum a validation meter's confusion matrix (multilabel: gather its probabilities and targets),
    loss sum and sample count over ranks (in place for the meter): every rank then computes the
    metrics of the whole split."""
    if not ctx.enabled:
        return total, count
    k = meter.num_classes
    if getattr(meter, "task", None) == "multilabel":  # the ranks' probabilities and targets, gathered
        shards: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(shards, meter.stacked())
        meter.probs = [p for p, _ in shards]
        meter.targets = [t for _, t in shards]
    else:
        if meter.confusion is None:  # a rank with no validation samples
            meter.confusion = torch.zeros(k, k, dtype=torch.int64, device=total.device)
        dist.all_reduce(meter.confusion, op=dist.ReduceOp.SUM)
    sums = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return sums[0], int(sums[1].item())


def print_effective_batch(ctx: Context, batch_size: int, accumulate: int, lr: float, lr_factor: int) -> None:
    """State once (rank 0) what one optimizer step sees and the learning rate it uses."""
    if ctx.is_main:
        scaled = f" (optimizer.lr {lr:g} x{lr_factor}, train.scale_lr)" if lr_factor > 1 else ""
        print(
            f"train: {ctx.world_size} process(es) x batch {batch_size} x accumulate {accumulate} = "
            f"effective batch {ctx.world_size * batch_size * accumulate}; lr {lr * lr_factor:g}{scaled}"
        )


def write_debug_samples(sampler: Sampler[int] | None, ctx: Context, epoch: int) -> None:
    """When ``YAMLTRAIN_DEBUG_SAMPLES`` names a folder, append this rank's epoch indices to
    ``rank<k>.txt`` there (one line per epoch): how the tests see which samples each rank trained on."""
    folder = os.environ.get(DEBUG_SAMPLES_ENV)
    if not folder or sampler is None:
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{ctx.rank}.txt"), "a") as fh:
        fh.write(f"{epoch} " + " ".join(str(i) for i in sampler) + "\n")
