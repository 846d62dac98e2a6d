"""Losses: the ``loss`` section -> an ``nn.Module`` called as ``loss(logits, target)``, and its
validate-time check.

Every loss takes logits and computes in float32 with autocast switched off, using the
``*_with_logits`` / ``log_softmax`` forms (``sigmoid`` + ``F.binary_cross_entropy`` is refused by
CUDA autocast and loses precision). The loss modules themselves are in :mod:`pipeline.training.losses`.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from pipeline.config.checks import semantic_check
from pipeline.config.errors import PipelineError, Problem
from pipeline.config.registry import is_import_path, signature_problems
from pipeline.training.losses import BINARY, MULTICLASS, Float32Loss, FunctionLoss, WeightedSum, losses

def _mode(num_outputs: int) -> str:
    return BINARY if num_outputs == 1 else MULTICLASS


def _build_one(name: str, params: dict[str, Any], num_outputs: int) -> nn.Module:
    if name == "sum":
        raise PipelineError("loss.terms: sum cannot be nested inside terms; list the terms directly")
    impl = losses.get(name)
    if is_import_path(name):
        if inspect.isclass(impl):
            if not issubclass(impl, nn.Module):
                raise PipelineError(f"loss {name!r}: a class must be a torch.nn.Module")
            return impl(**params)
        if not callable(impl):
            raise PipelineError(f"loss {name!r} is neither an nn.Module class nor a function")
        return FunctionLoss(impl, params)
    mode = _mode(num_outputs)
    if mode not in impl.supports:
        raise PipelineError(_mode_message(name, mode, num_outputs))
    for arg, message in _per_class_problems(name, params, num_outputs):
        raise PipelineError(f"loss {name!r} params.{arg}: {message}")
    return impl(**params)


def _per_class_problems(name: str, params: dict[str, Any], num_outputs: int | None) -> list[tuple[str, str]]:
    """Per-class weight lists (cross_entropy ``weight``, focal ``alpha``) must match the classes."""
    arg = {"cross_entropy": "weight", "focal": "alpha"}.get(name)
    value = params.get(arg) if arg else None
    if value is None or num_outputs is None:
        return []
    if num_outputs == 1:
        if isinstance(value, list):
            return [(arg, "binary focal alpha is one number (the weight of the positive class)")]
        return []
    if isinstance(value, list) and len(value) != num_outputs:
        return [(arg, f"{len(value)} per-class weights for {num_outputs} classes")]
    return []


def _mode_message(name: str, mode: str, num_outputs: int | None) -> str:
    outs = f" ({num_outputs} output channels)" if num_outputs else ""
    if mode == MULTICLASS and name in ("bce", "dice_bce"):
        return (f"{name} is for binary tasks (one logit channel); this task is multi-class{outs}: use "
                "cross_entropy, or name: sum with terms [{name: dice}, {name: cross_entropy}]")
    if mode == BINARY:
        return (f"{name} is for multi-class tasks; this task is binary (one logit channel): use bce, "
                "dice_bce, dice, iou, tversky or focal")
    return f"{name} does not support multi-class tasks{outs}"


def build_loss(cfg: dict[str, Any], *, task: str, num_outputs: int) -> nn.Module:
    """The loss module for the resolved ``loss`` section; ``num_outputs`` is the model's logit count
    (1 = binary). ``task`` is recorded for messages only: the mode comes from ``num_outputs``."""
    name = cfg["name"]
    if name == "sum":
        terms = cfg.get("terms") or []
        if not terms:
            raise PipelineError("loss.terms: name: sum needs at least one term")
        inner: nn.Module = WeightedSum([(float(t.get("weight", 1.0)),
                                         _build_one(t["name"], dict(t.get("params") or {}), num_outputs))
                                        for t in terms])
    else:
        inner = _build_one(name, dict(cfg.get("params") or {}), num_outputs)
    return Float32Loss(inner, f"{name} ({task})")


# --- validate-time checks --------------------------------------------------------------------------

def _expected_outputs(params: Any) -> tuple[str | None, int | None]:
    """(binary or multi-class, logit channels) from the data section, as far as known without data."""
    if params.has("model.num_classes") and params.get("model.num_classes") is not None:
        return None, None  # the model overrides the head size; build_loss checks at run time
    task, num_classes = params.get("data.task"), params.get("data.num_classes")
    if task == "classification":
        return MULTICLASS, num_classes
    if num_classes is None:
        return None, None
    return (BINARY, 1) if num_classes == 2 else (MULTICLASS, num_classes)


def _loss_problems(name: str, loss_params: dict[str, Any], key: str,
                   expected: tuple[str | None, int | None]) -> list[Problem]:
    """Problems of one loss entry at ``key`` (``loss`` or ``loss.terms[i]``)."""
    if name == "sum":
        return [Problem(f"{key}.name", "sum cannot be nested inside terms; list the terms directly")]
    if name not in losses:
        return [Problem(f"{key}.name", losses.unknown_message(name))]
    try:
        impl = losses.get(name)
    except Exception as exc:  # user code may fail to import in any way; report it, no traceback
        return [Problem(f"{key}.name", str(exc) if isinstance(exc, PipelineError)
                        else f"importing {name!r} failed: {type(exc).__name__}: {exc}")]
    skip, (mode, num_outputs) = 0, expected
    if is_import_path(name):
        if inspect.isclass(impl) and not issubclass(impl, nn.Module):
            return [Problem(f"{key}.name", f"{name!r} is a class but not a torch.nn.Module")]
        if not callable(impl):
            return [Problem(f"{key}.name", f"{name!r} is neither an nn.Module class nor a function")]
        skip = 0 if inspect.isclass(impl) else 2  # a function takes (logits, target) first
    elif mode is not None and mode not in impl.supports:
        return [Problem(f"{key}.name", _mode_message(name, mode, None))]
    bad = signature_problems(impl, loss_params, skip=skip)
    if not is_import_path(name):
        bad += _per_class_problems(name, loss_params, num_outputs)
    return [Problem(f"{key}.params.{arg}" if arg else f"{key}.params", message) for arg, message in bad]


@semantic_check("loss", "data")
def check_loss(params: Any) -> list[Problem]:
    """Loss names exist, their params bind, sum has terms, and the loss fits the task."""
    cfg = params.get("loss")
    expected = _expected_outputs(params)
    problems: list[Problem] = []
    if cfg["name"] == "sum":
        if not cfg["terms"]:
            problems.append(Problem("loss.terms", "name: sum needs at least one term, e.g. "
                                    "[{name: dice, weight: 1}, {name: focal, weight: 0.5}]"))
        if cfg["params"]:
            problems.append(Problem("loss.params", "name: sum takes no params; give each term its own params"))
        for i, term in enumerate(cfg["terms"]):
            problems += _loss_problems(term["name"], term.get("params") or {}, f"loss.terms[{i}]", expected)
    else:
        if cfg["terms"]:
            problems.append(Problem("loss.terms", f"terms are only used with name: sum (name is {cfg['name']!r})"))
        problems += _loss_problems(cfg["name"], cfg["params"], "loss", expected)
    return problems
