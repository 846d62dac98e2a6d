"""Optimizers: the ``optimizer`` section plus the model's parameter groups -> a ``torch.optim``
optimizer.

Any ``torch.optim`` class by name (or ``module.path:Class``), its keyword arguments checked against
its signature by ``validate``. Each model group (backbone/head) gets ``lr = optimizer.lr * lr_mult``;
with ``no_decay_norm_bias`` it is split in two, and biases and other 1-D parameters (norm weights)
get ``weight_decay = 0`` (decaying them only pulls normalisation scales towards zero).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.config.checks import semantic_check
from pipeline.config.errors import PipelineError, Problem
from pipeline.config.registry import Registry, signature_problems

if TYPE_CHECKING:
    from pipeline.models.file import ModelInfo


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    return {name: obj for name, obj in vars(torch.optim).items()
            if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer and name not in UNSUPPORTED}


# In torch.optim but unusable from a training loop that calls optimizer.step() on dense gradients.
UNSUPPORTED = {
    "LBFGS": "LBFGS needs a closure re-evaluating the model in step(), which this training loop does not do",
    "SparseAdam": "SparseAdam only takes sparse gradients (nn.Embedding(sparse=True)); image models have dense ones",
    "Muon": "Muon only optimizes 2-D weight matrices (conv kernels, biases and norms need another optimizer); "
            "wrap it in your own 'module.path:Class' that routes the other parameters to AdamW",
}

optimizers = Registry("optimizers", provider=_torch_optimizers)


def _accepts_weight_decay(cls: Any) -> bool:
    try:
        return "weight_decay" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D parameters (BatchNorm/LayerNorm/GroupNorm weights) are not decayed."""
    return param.ndim <= 1 or name.endswith(".bias")


def optimizer_groups(groups: list[dict[str, Any]], *, lr: float, split_no_decay: bool) -> list[dict[str, Any]]:
    """The torch param groups: lr scaled per group, optionally split into decay / no-decay halves.
    Each keeps ``name`` and ``lr_mult`` (for logging) and gets ``no_decay`` (bool); empty groups
    (fully frozen) are dropped."""
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        names = list(group.get("names") or [f"{group.get('name', 'group')}.{i}" for i in range(len(params))])
        if len(names) != len(params):
            raise PipelineError(f"parameter group {group.get('name')!r}: {len(names)} names for {len(params)} parameters")
        mult = float(group.get("lr_mult", 1.0))
        base = {k: v for k, v in group.items() if k not in ("params", "names")}
        base.update(lr=lr * mult, lr_mult=mult, name=group.get("name", "group"))
        halves = [(False, params, names)]
        if split_no_decay:
            flags = [_is_no_decay(n, p) for n, p in zip(names, params)]
            halves = [(False, [p for p, f in zip(params, flags) if not f], [n for n, f in zip(names, flags) if not f]),
                      (True, [p for p, f in zip(params, flags) if f], [n for n, f in zip(names, flags) if f])]
        for no_decay, ps, ns in halves:
            if ps:
                extra = {"weight_decay": 0.0} if no_decay else {}
                out.append({**base, **extra, "params": ps, "names": ns, "no_decay": no_decay})
    return out


def build_optimizer(cfg: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer for the resolved ``optimizer`` section over the model's parameter groups
    (``{"params", "names", "lr_mult", "name"}`` dicts)."""
    name = cfg["name"]
    if name in UNSUPPORTED:
        raise PipelineError(f"optimizer.name: {UNSUPPORTED[name]}")
    cls = optimizers.get(name)
    kwargs = dict(cfg.get("params") or {})
    split = bool(cfg.get("no_decay_norm_bias", True)) and _accepts_weight_decay(cls)
    torch_groups = optimizer_groups(groups, lr=float(cfg["lr"]), split_no_decay=split)
    if not torch_groups:
        raise PipelineError("optimizer: the model has no trainable parameters (is everything frozen? see model.freeze)")
    try:
        return cls(torch_groups, lr=float(cfg["lr"]), **kwargs)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"optimizer {name!r}: {exc} (optimizer.params)") from None


@semantic_check("optimizer")
def check_optimizer(params: Any) -> list[Problem]:
    """The optimizer exists, is usable here, and its params bind to its signature."""
    cfg = params.get("optimizer")
    name, kwargs = cfg["name"], cfg["params"]
    if name in UNSUPPORTED:
        return [Problem("optimizer.name", UNSUPPORTED[name])]
    if name not in optimizers:
        return [Problem("optimizer.name", optimizers.unknown_message(name))]
    try:
        cls = optimizers.get(name)
    except Exception as exc:  # user code may fail to import in any way; report it, no traceback
        return [Problem("optimizer.name", str(exc) if isinstance(exc, PipelineError)
                        else f"importing {name!r} failed: {type(exc).__name__}: {exc}")]
    problems = []
    for key in ("params", "lr"):
        if key in kwargs:
            where = "optimizer.lr" if key == "lr" else "the model's parameter groups"
            problems.append(Problem(f"optimizer.params.{key}", f"set by the pipeline; use {where}"))
    rest = {k: v for k, v in kwargs.items() if k not in ("params", "lr")}
    problems += [Problem(f"optimizer.params.{arg}" if arg else "optimizer.params", message)
                 for arg, message in signature_problems(cls, rest, provided=("params", "lr"))]
    return problems


def parameter_groups(model: nn.Module, info: "ModelInfo", lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer groups ``backbone`` and ``head`` with their learning-rate multipliers; frozen
    parameters are left out, and so is a group with nothing left to train."""
    groups = {part: {"params": [], "names": [], "lr_mult": float(lr_mult.get(part, 1.0)), "name": part}
              for part in ("backbone", "head")}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = groups["head" if info.is_head(name) else "backbone"]
            group["params"].append(param)
            group["names"].append(name)
    return [g for g in groups.values() if g["params"]]
