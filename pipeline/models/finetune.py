"""Fine-tuning mechanics shared by every model family: where the head is, the input convolution for
another channel count, and freezing (including the BatchNorm trap).

A head is named by parameter-name prefixes (``fc``, ``classifier.6``, ``heads.head``, ``head``):
the prefixes travel in the initial model's metadata so training can split backbone and head into
parameter groups without knowing the family.
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Callable, Collection, Sequence

from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.config.schema import did_you_mean

TORCHVISION_HEADS = ("heads", "fc", "head", "classifier")  # ViT, ResNet & co, Swin, the rest


def in_prefixes(name: str, prefixes: Sequence[str]) -> bool:
    """``name`` is one of ``prefixes`` or lies under one (``fc.weight`` under ``fc``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _last_layer(module: nn.Module, prefix: str) -> str | None:
    """Name of the last Linear/Conv2d inside ``module`` (a classifier's output layer)."""
    layers = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        return None
    return f"{prefix}.{layers[-1]}" if layers[-1] else prefix


def find_head(model: nn.Module, source: str) -> list[str]:
    """Parameter-name prefixes of the output layer that a new task replaces."""
    declared = getattr(model, "head_prefixes", None)  # user models may say it themselves
    if declared:
        return list(declared)
    if source == "unet":
        return ["head"]
    if source == "timm":
        classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
        names = [classifier] if isinstance(classifier, str) else list(classifier or ())
        modules = dict(model.named_modules())
        found = [n for n in names if n in modules and any(True for _ in modules[n].parameters())]
        if found:
            return found
    for attr in TORCHVISION_HEADS:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module) and (last := _last_layer(module, attr)):
            return [last]
    last = _last_layer(model, "")
    if last is None:
        raise PipelineError(
            f"model: cannot find the output layer of {type(model).__name__}; give the "
            "module a `head_prefixes` attribute naming it"
        )
    return [last.lstrip(".")]


def replace_first_conv(model: nn.Module, in_chans: int) -> nn.Module:
    """Swap the first Conv2d for one taking ``in_chans`` channels (for libraries without ``in_chans``)."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].groups != 1:
        raise PipelineError(f"model.in_chans: cannot adapt the input of {type(model).__name__} to {in_chans} channels")
    name, conv = found
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        _pair(conv.dilation),
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's (height, width) size: stored as ``tuple[int, ...]``, taken by the constructor as a pair."""
    height, width = size
    return height, width


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen BatchNorm: always eval, so its running statistics never move."""
    return nn.Module.train(self, False)


def frozen_predicate(
    freeze: str | list[str], head_prefixes: Sequence[str], fresh: Collection[str] = ()
) -> Callable[[str], bool]:
    """``none``, ``backbone`` (what the starting weights gave: all but the head and the ``fresh``,
    randomly initialised, tensors) or glob patterns -> is this parameter frozen?"""
    if freeze == "none":
        return lambda name: False
    if freeze == "backbone":
        fresh = frozenset(fresh)
        return lambda name: not in_prefixes(name, head_prefixes) and name not in fresh
    return lambda name: any(fnmatch.fnmatchcase(name, p) or in_prefixes(name, [p]) for p in freeze)


def freeze_problem(freeze: str | list[str], pretrained: bool | str) -> str | None:
    """Why ``model.freeze`` cannot work with ``model.pretrained`` (checked by validate and the stage)."""
    if freeze == "backbone" and pretrained is False:
        return (
            "backbone freezes what the starting weights give, and model.pretrained is false: every layer "
            "starts random; set model.pretrained, or freeze: none, or name the layers to freeze"
        )
    return None


def apply_freeze(
    model: nn.Module, freeze: str | list[str], head_prefixes: Sequence[str], *, fresh: Collection[str] = ()
) -> list[str]:
    """Set ``requires_grad=False`` on frozen parameters and pin frozen BatchNorm layers to eval mode
    (``requires_grad`` alone does not stop running statistics). Returns the frozen names.

    A pattern that matches nothing is an error (a typo would otherwise silently train everything)."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(freeze, list):
        for pattern in freeze:
            if not any(fnmatch.fnmatchcase(n, pattern) or in_prefixes(n, [pattern]) for n in names):
                modules = sorted({n.rsplit(".", 1)[0] for n in names})
                raise PipelineError(
                    f"model.freeze: pattern {pattern!r} matches no parameter"
                    f"{did_you_mean(pattern, modules + names)}; names look like "
                    f"{', '.join(names[:4])} (globs such as 'layer1.*' work)"
                )
    is_frozen = frozen_predicate(freeze, head_prefixes, fresh)
    frozen = [n for n in names if is_frozen(n)]
    for name, param in model.named_parameters():
        if is_frozen(name):
            param.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
            if all(is_frozen(n) for n in own or [f"{name}.weight"]):
                pin_eval(module)
    return frozen


def pin_eval(module: nn.Module) -> None:
    """Keep ``module`` in eval mode for good. An instance attribute wins over ``nn.Module.train``, and
    parents call ``child.train(mode)``, so ``model.train()`` anywhere (and a deepcopy) keeps it in eval."""
    module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]  # the instance attribute is the point
    module.eval()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps frozen BatchNorm layers pinned in eval:
    the conversion builds new modules and would drop the pin, letting frozen statistics move."""
    import torch

    pinned = set(frozen_batchnorm_layers(model))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, module in converted.named_modules():
        if name in pinned:
            pin_eval(module)
    return converted


def frozen_batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of BatchNorm layers pinned to eval mode by :func:`apply_freeze`."""
    return [n for n, m in model.named_modules() if "train" in vars(m)]
