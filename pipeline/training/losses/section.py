"""The ``loss`` section -> an ``nn.Module`` called as ``loss(logits, target)``; its semantic check.

Every loss takes logits and computes in float32 with autocast switched off, using the
``*_with_logits`` / ``log_softmax`` forms (``sigmoid`` + ``F.binary_cross_entropy`` is refused by
CUDA autocast and loses precision). The loss modules themselves are in the other modules of :mod:`pipeline.training.losses`.
``validate`` builds the declared loss with :func:`build_loss` and calls it on a two-sample batch of
the task's shape, so a value the loss only rejects when called (``alpha: 'high'``) is found there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.config.building import blamed_attempt, check_binding, required_arguments, resolve
from pipeline.config.dotted import is_import_path
from pipeline.config.errors import ComponentError, PipelineError, Problem
from pipeline.config.params import Params
from pipeline.training.losses.auto import resolve_auto
from pipeline.training.losses.base import BINARY, MULTICLASS, MULTILABEL, losses
from pipeline.training.losses.combined import WeightedSum
from pipeline.training.losses.wrappers import Float32Loss, FunctionLoss


def _mode(num_outputs: int, task: str = "") -> str:
    if task == "multilabel":
        return MULTILABEL
    return BINARY if num_outputs == 1 else MULTICLASS


def _per_class_problem(name: str, params: dict[str, Any], num_outputs: int, task: str) -> tuple[str, str] | None:
    """Per-class weight lists (cross_entropy ``weight``, focal ``alpha``, bce ``pos_weight``) must match
    the classes."""
    arg = {"cross_entropy": "weight", "focal": "alpha", "bce": "pos_weight"}.get(name)
    value = params.get(arg) if arg else None
    if arg is None or value is None:
        return None
    if name == "focal" and task == "multilabel" and isinstance(value, list):
        return arg, "multilabel focal alpha is one number (the weight of positives in every class)"
    if num_outputs == 1 and isinstance(value, list):
        return arg, f"binary {name} {arg} is one number (the weight of the positive class)"
    if num_outputs > 1 and isinstance(value, list) and len(value) != num_outputs:
        return arg, f"{len(value)} per-class weights for {num_outputs} classes"
    return None


def _mode_message(name: str, mode: str, num_outputs: int) -> str:
    if mode == MULTILABEL:
        return (
            f"{name} does not take multilabel targets (one sigmoid per class); use bce, focal or asymmetric, "
            "or name: sum over them"
        )
    outs = f" ({num_outputs} output channels)" if mode == MULTICLASS else ""
    if mode == MULTICLASS and name in ("bce", "dice_bce"):
        return (
            f"{name} is for binary tasks (one logit channel); this task is multi-class{outs}: use "
            "cross_entropy, or name: sum with terms [{name: dice}, {name: cross_entropy}]"
        )
    if mode == BINARY:
        return (
            f"{name} is for multi-class tasks; this task is binary (one logit channel): use bce, "
            "dice_bce, dice, iou, tversky or focal"
        )
    return f"{name} does not support multi-class tasks{outs}"


def _build_one(name: str, params: dict[str, Any], num_outputs: int, key: str, task: str) -> nn.Module:
    """One loss (``key`` is ``loss`` or ``loss.terms[i]``), called once on a stand-in batch: its
    constructor and its forward see every value before training does."""
    if name == "sum":
        raise ComponentError.at(f"{key}.name", "sum cannot be nested inside terms; list the terms directly")
    impl = resolve(losses, name, f"{key}.name")
    skip = 0
    if is_import_path(name):
        if inspect.isclass(impl) and not issubclass(impl, nn.Module):
            raise ComponentError.at(f"{key}.name", f"{name!r} is a class but not a torch.nn.Module")
        if not callable(impl):
            raise ComponentError.at(f"{key}.name", f"{name!r} is neither an nn.Module class nor a function")
        skip = 0 if inspect.isclass(impl) else 2  # a function takes (logits, target) first
    else:
        mode = _mode(num_outputs, task)
        if mode not in impl.supports:
            raise ComponentError.at(f"{key}.name", _mode_message(name, mode, num_outputs))
        bad = _per_class_problem(name, params, num_outputs, task)
        if bad:
            raise ComponentError.at(f"{key}.params.{bad[0]}", bad[1])
    check_binding(impl, params, key=f"{key}.params", skip=skip)
    construct: Callable[..., nn.Module] = impl  # an nn.Module class (checked above) or a loss function

    def attempt(args: dict[str, Any]) -> nn.Module:
        module = construct(**args) if inspect.isclass(impl) else FunctionLoss(impl, args)
        probe(Float32Loss(module, name), num_outputs, task)
        return module

    required = required_arguments(impl) if inspect.isclass(impl) else set()
    return blamed_attempt(attempt, params, key=f"{key}.params", what=name, required=required)


def probe(loss: nn.Module, num_outputs: int, task: str) -> None:
    """Call ``loss`` on a two-sample batch of the task's shape (4x4 masks, or labels) with random
    logits and valid targets, and backward through it: what raises here would raise in training. (A
    non-finite value is the train loop's NaN stop to report.) Its own generator leaves the global RNG,
    and so training, untouched."""
    generator = torch.Generator().manual_seed(0)
    classes = 2 if num_outputs == 1 else num_outputs
    spatial = (4, 4) if task == "segmentation" else ()
    logits = torch.randn(2, num_outputs, *spatial, generator=generator, requires_grad=True)
    if task == "multilabel":  # multi-hot float targets [N, C]
        target = torch.randint(0, 2, (2, num_outputs), generator=generator).float()
    else:
        target = torch.randint(0, classes, (2, *spatial), generator=generator)
    loss(logits, target).backward()


def build_loss(cfg: dict[str, Any], *, task: str, num_outputs: int, counts: Sequence[int] | None = None) -> nn.Module:
    """The loss module for the resolved ``loss`` section; ``num_outputs`` is the model's logit count
    (1 = binary, which is the mode), ``task`` the shape of a batch (masks or labels), ``counts`` the
    training split's per-class counts that ``weight: auto`` / ``pos_weight: auto`` are computed from
    (:func:`~pipeline.training.losses.auto.train_counts`)."""
    cfg, _ = resolve_auto(cfg, counts, num_outputs)
    name = cfg["name"]
    params = dict(cfg.get("params") or {})
    terms = cfg.get("terms") or []
    if name != "sum":
        if terms:
            raise ComponentError.at("loss.terms", f"terms are only used with name: sum (name is {name!r})")
        return Float32Loss(_build_one(name, params, num_outputs, "loss", task), f"{name} ({task})")
    problems = []
    if not terms:
        problems.append(
            Problem(
                "loss.terms",
                "name: sum needs at least one term, e.g. [{name: dice, weight: 1}, {name: focal, weight: 0.5}]",
            )
        )
    if params:
        problems.append(Problem("loss.params", "name: sum takes no params; give each term its own params"))
    built = []
    for i, term in enumerate(terms):
        try:
            built.append(
                (
                    float(term.get("weight", 1.0)),
                    _build_one(term["name"], dict(term.get("params") or {}), num_outputs, f"loss.terms[{i}]", task),
                )
            )
        except ComponentError as exc:
            problems += exc.problems
    if problems:
        raise ComponentError(problems)
    return Float32Loss(WeightedSum(built), f"{name} ({task})")


def _expected_outputs(params: Any) -> int | None:
    """The model's logit count as far as the file tells without the data (model.num_classes, else
    data.num_classes); None when only the split stage can know (num_classes: null)."""
    task = params.get("data.task")
    num_classes = params.get("model.num_classes") or params.get("data.num_classes")
    if num_classes is None:
        return None
    return 1 if task == "segmentation" and num_classes == 2 else num_classes


def _soft_target_refusals(params: Params) -> list[str]:
    """The loss keys (``loss.name``, ``loss.terms[i].name``) naming a loss that does not take soft targets."""
    cfg = params.get("loss")
    named = [(f"loss.terms[{i}].name", t["name"]) for i, t in enumerate(cfg.get("terms") or [])]
    refused = []
    for key, name in named if cfg["name"] == "sum" else [("loss.name", cfg["name"])]:
        try:
            impl = resolve(losses, name, key)
        except ComponentError:
            continue  # the loss check reports it
        if not getattr(impl, "soft_targets", False):
            refused.append(f"{key} {name!r}")
    return refused


def check_mix_targets(params: Params) -> list[Problem]:
    """augment.mix on labels gives soft targets (mixed one-hot or multi-hot vectors): the loss must take
    them (a loss class with ``soft_targets = True``: cross_entropy, bce, asymmetric); segmentation's
    cutmix keeps hard masks."""
    cfg = params.get("augment.mix")
    task = params.get("data.task")
    if task == "segmentation" or not (cfg["mixup_alpha"] > 0 or cfg["cutmix_alpha"] > 0):
        return []
    takes = "cross_entropy" if task == "classification" else "bce or asymmetric"
    return [
        Problem(
            "augment.mix",
            f"mixup/cutmix give soft targets, which {name} does not take; use {takes} "
            "(or a loss with soft_targets = True), or set mixup_alpha and cutmix_alpha to 0",
        )
        for name in _soft_target_refusals(params)
    ]


def check_loss(params: Params) -> list[Problem]:
    """Build the declared loss with the train stage's builder and call it on a stand-in batch; when
    the class count is not known before the split, build it for a mode the loss supports."""
    cfg = params.get("loss")
    num_outputs = _expected_outputs(params)
    if num_outputs is None:  # a mode the loss supports (classification is multi-class)
        supported = getattr(losses.find(cfg["name"]), "supports", (BINARY, MULTICLASS, MULTILABEL))
        binary = BINARY in supported and params.get("data.task") == "segmentation"
        num_outputs = 1 if binary else 3
    stand_in = [1] * (2 if num_outputs == 1 else num_outputs)  # auto weights of balanced classes
    try:
        build_loss(cfg, task=params.get("data.task"), num_outputs=num_outputs, counts=stand_in)
    except ComponentError as exc:
        return exc.problems
    except PipelineError as exc:
        return [Problem("loss", str(exc))]
    return []
