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

from pipeline.config.building import blamed_attempt, check_binding, required_arguments, resolve
from pipeline.config.errors import ComponentError, PipelineError, Problem
from pipeline.config.params import Params
from pipeline.config.registry import Registry

if TYPE_CHECKING:
    from pipeline.models.file import ModelInfo


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    return {
        name: obj
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
        and name not in UNSUPPORTED
    }


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
            raise PipelineError(
                f"parameter group {group.get('name')!r}: {len(names)} names for {len(params)} parameters"
            )
        mult = float(group.get("lr_mult", 1.0))
        base = {k: v for k, v in group.items() if k not in ("params", "names")}
        base.update(lr=lr * mult, lr_mult=mult, name=group.get("name", "group"))
        halves = [(False, params, names)]
        if split_no_decay:
            flags = [_is_no_decay(n, p) for n, p in zip(names, params)]
            halves = [
                (False, [p for p, f in zip(params, flags) if not f], [n for n, f in zip(names, flags) if not f]),
                (True, [p for p, f in zip(params, flags) if f], [n for n, f in zip(names, flags) if f]),
            ]
        for no_decay, ps, ns in halves:
            if ps:
                extra = {"weight_decay": 0.0} if no_decay else {}
                out.append({**base, **extra, "params": ps, "names": ns, "no_decay": no_decay})
    return out


def build_optimizer(cfg: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer for the resolved ``optimizer`` section over the model's parameter groups
    (``{"params", "names", "lr_mult", "name"}`` dicts). ``validate`` runs this very function on a
    one-parameter stand-in, so every rule lives here; problems raise :class:`ComponentError` at their key."""
    name = cfg["name"]
    if name in UNSUPPORTED:
        raise ComponentError.at("optimizer.name", UNSUPPORTED[name])
    cls = resolve(optimizers, name, "optimizer.name")
    kwargs = dict(cfg.get("params") or {})
    pipeline_args = [
        Problem(f"optimizer.params.{key}", f"set by the pipeline; use {where}")
        for key, where in (("params", "the model's parameter groups"), ("lr", "optimizer.lr"))
        if key in kwargs
    ]
    if pipeline_args:
        raise ComponentError(pipeline_args)
    check_binding(cls, kwargs, key="optimizer.params", provided=("params", "lr"))
    split = bool(cfg.get("no_decay_norm_bias", True)) and _accepts_weight_decay(cls)
    lr = float(cfg["lr"])
    torch_groups = optimizer_groups(groups, lr=lr, split_no_decay=split)
    if not torch_groups:
        raise PipelineError("optimizer: the model has no trainable parameters (is everything frozen? see model.freeze)")

    defaults = fast_defaults(cls, kwargs, torch_groups)

    def attempt(args: dict[str, Any]) -> torch.optim.Optimizer:
        optimizer = cls(torch_groups, lr=lr, **defaults, **args)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{name} built a {type(optimizer).__name__}, not a torch.optim.Optimizer")
        return optimizer

    return blamed_attempt(attempt, kwargs, key="optimizer.params", what=name, required=required_arguments(cls))


def fast_defaults(cls: type, kwargs: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """``fused=True`` for an optimizer that has a fused CUDA kernel (Adam, AdamW, SGD, ...) when every
    parameter is on CUDA and the params leave ``fused`` and ``foreach`` unset: one kernel per step instead
    of torch's multi-tensor default, and with fp16 the GradScaler then checks overflow on the device
    (no host sync per step). Elsewhere torch's own default stands."""
    if "fused" in kwargs or "foreach" in kwargs or "fused" not in inspect.signature(cls).parameters:
        return {}
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return {"fused": True} if on_cuda and any(g["params"] for g in groups) else {}


def stand_in_groups() -> list[dict[str, Any]]:
    """One weight and one bias, as a model's backbone group: what ``validate`` builds optimizers on."""
    weight, bias = torch.zeros(2, 2, requires_grad=True), torch.zeros(2, requires_grad=True)
    return [{"params": [weight, bias], "names": ["stand_in.weight", "stand_in.bias"], "name": "backbone"}]


def _step_once(optimizer: torch.optim.Optimizer) -> None:
    """One optimizer step on a gradient of ones: values such as ``betas: [2, 0.9]`` only fail here."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.ones_like(param)
    optimizer.step()


def check_optimizer(params: Params) -> list[Problem]:
    """Build the declared optimizer (the train stage's own builder) on a stand-in and step it once."""
    cfg = {**params.get("optimizer"), "lr": 1e-3}  # optimizer.lr's range is the schema's to check

    def attempt(args: dict[str, Any]) -> None:
        _step_once(build_optimizer({**cfg, "params": args}, stand_in_groups()))

    try:
        build_optimizer(cfg, stand_in_groups())  # binding and construction problems, located
        blamed_attempt(attempt, dict(cfg["params"] or {}), key="optimizer.params", what=f"{cfg['name']}.step()")
    except ComponentError as exc:
        return exc.problems
    except PipelineError as exc:
        return [Problem("optimizer", str(exc))]
    return []


def parameter_groups(model: nn.Module, info: ModelInfo, lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer groups ``backbone`` and ``head`` with their learning-rate multipliers; frozen
    parameters are left out, and so is a group with nothing left to train."""
    groups: dict[str, dict[str, Any]] = {
        part: {"params": [], "names": [], "lr_mult": float(lr_mult.get(part, 1.0)), "name": part}
        for part in ("backbone", "head")
    }
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = groups["head" if info.is_head(name) else "backbone"]
            group["params"].append(param)
            group["names"].append(name)
    return [g for g in groups.values() if g["params"]]
