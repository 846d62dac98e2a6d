"""Building networks from an architecture config: torchvision and timm classifiers, the classic
U-Net and U-Nets with a timm encoder, or the user's own ``module.path:factory``. Nothing here
downloads: weights are loaded afterwards (:mod:`pipeline.models.initial`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.config.building import located, one_line
from pipeline.config.dotted import import_object, is_import_path
from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params
from pipeline.config.registry import Registry
from pipeline.config.schema import did_you_mean
from pipeline.models import weights as weights_io
from pipeline.models.finetune import freeze_problem, replace_first_conv
from pipeline.models.unet import ClassicUNet, TimmUNet


def num_outputs(task: str, num_classes: int) -> int:
    """Output units of the head: one logit channel for binary segmentation (sigmoid), else one per
    class (softmax; multilabel: one sigmoid per class)."""
    return 1 if task == "segmentation" and num_classes == 2 else num_classes


def build_torchvision(config: dict[str, Any]) -> nn.Module:
    """torchvision classification model (new head: fc, classifier's last layer, or heads)."""
    import torchvision

    name, extra = config["name"], {}
    if name in ("inception_v3", "googlenet"):
        extra["aux_logits"] = False  # auxiliary outputs would turn the logits into a tuple
    if name.startswith("vit_"):
        height, width = config["image_size"]
        if height != width:
            raise PipelineError(
                f"model.name: torchvision {name} needs square images, got data.image_size {config['image_size']}"
            )
        extra["image_size"] = height
    model = torchvision.models.get_model(name, weights=None, num_classes=config["num_outputs"], **extra)
    return replace_first_conv(model, config["in_chans"]) if config["in_chans"] != 3 else model


def build_timm(config: dict[str, Any], **timm_kwargs: Any) -> nn.Module:
    """timm classification model (new head via num_classes / reset_classifier)."""
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(config["name"])
    if cfg is not None and cfg.fixed_input_size:
        timm_kwargs.setdefault("img_size", tuple(config["image_size"]))
    return timm.create_model(
        config["name"], num_classes=config["num_outputs"], in_chans=config["in_chans"], **timm_kwargs
    )


def build_unet(config: dict[str, Any], **timm_kwargs: Any) -> nn.Module:
    """U-Net: name classic, or any timm backbone with features_only as the encoder (unet/<timm name>)."""
    unet = config["unet"]
    common = dict(
        in_chans=config["in_chans"],
        num_outputs=config["num_outputs"],
        base_channels=unet["base_channels"],
        depth=unet["depth"],
        upsampling=unet["upsampling"],
    )
    if config["name"] == "classic":
        return ClassicUNet(**common)
    try:
        return TimmUNet(config["name"], **common, **timm_kwargs)
    except ValueError as exc:
        raise PipelineError(f"model.name: {exc}") from None


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _provide_models() -> dict[str, Any]:
    found: dict[str, Any] = {f"torchvision/{n}": build_torchvision for n in _torchvision_names()}
    found.update({f"timm/{n}": build_timm for n in _timm_names()})
    return found


MODELS = Registry("models", provider=_provide_models)
MODELS.add("unet/classic", ClassicUNet)
MODELS.add("unet/<timm backbone>", TimmUNet)  # a note in `list models`: name any timm/ model as encoder


def build_model(config: dict[str, Any], **timm_kwargs: Any) -> nn.Module:
    """The module for an architecture config (random init; never downloads anything)."""
    if is_import_path(config["name"]):
        return import_object(config["name"])(num_classes=config["num_outputs"], in_chans=config["in_chans"])
    builder = {"torchvision": build_torchvision, "timm": build_timm, "unet": build_unet}[config["source"]]
    return builder(config, **timm_kwargs)


GRAD_CHECKPOINTING_KEY = "model.grad_checkpointing"


def set_grad_checkpointing(model: nn.Module, what: str) -> None:
    """Turn on ``model.grad_checkpointing``: the model's own ``set_grad_checkpointing`` (timm's models,
    the U-Nets: :mod:`pipeline.models.unet`). A model without one (torchvision's) or whose method
    refuses is a :class:`PipelineError` naming the key; ``what`` names the model in it. The model
    file records nothing: activations are recomputed in training only, inference is unchanged."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if not callable(setter):
        raise PipelineError(
            f"{GRAD_CHECKPOINTING_KEY}: {what} does not support gradient checkpointing (it has no "
            "set_grad_checkpointing, as timm models and the U-Nets do); set false"
        )
    try:
        setter(True)
    except Exception as exc:  # timm models that lack it assert or raise NotImplementedError
        raise PipelineError(
            f"{GRAD_CHECKPOINTING_KEY}: {what} does not support gradient checkpointing ({one_line(exc)}); set false"
        ) from None


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def check_model(params: Params) -> list[Problem]:
    """The model exists for its source and task; a pretrained path exists and is a weight file."""
    model, task = params.get("model"), params.get("data.task")
    source, name, problems = model["source"], model["name"], []
    if task == "segmentation" and source != "unet":
        problems.append(
            Problem(
                "model.source",
                f"{source} builds classifiers; segmentation needs "
                "source: unet (name: classic, or a timm backbone as the encoder)",
            )
        )
    if task in ("classification", "multilabel") and source == "unet":
        problems.append(Problem("model.source", f"a U-Net segments; {task} needs torchvision or timm"))
    if not is_import_path(name) and (unknown := unknown_model(source, name)):
        problems.append(Problem("model.name", unknown))
    pretrained = model["pretrained"]
    if pretrained is True and source == "unet" and name == "classic":
        problems.append(
            Problem(
                "model.pretrained",
                "the classic U-Net has no library weights; use false or a path to a .pt/.pth/.safetensors state dict",
            )
        )
    if isinstance(pretrained, str):
        path = params.resolve_path(pretrained)
        if path.suffix not in weights_io.SUFFIXES:
            problems.append(
                Problem(
                    "model.pretrained",
                    f"{pretrained!r}: unsupported extension; expected {', '.join(weights_io.SUFFIXES)}",
                )
            )
        elif not path.is_file():
            problems.append(Problem("model.pretrained", f"weight file {str(path)!r} does not exist"))
    freezing = freeze_problem(model["freeze"], pretrained)
    if freezing:
        problems.append(Problem("model.freeze", freezing))
    if not any(p.key in ("model.source", "model.name", "model.freeze") for p in problems):
        problems += _build_problems(params)
    return problems


def unknown_model(source: str, name: str) -> str | None:
    """Why ``source``/``name`` names no model of that source's registry (None when it does), with a
    did-you-mean. ``check_model`` and a model file's recipe check share it: a file names its
    architecture only as data."""
    if source == "unet":
        if name == "classic":
            return None
        import timm

        if timm.is_model(name):
            return None
        return (
            f"unknown U-Net encoder {name!r}{did_you_mean(name, ['classic', *_timm_names()])}; use classic or a "
            "timm backbone (`python -m pipeline list models 'timm/*'`)"
        )
    if source == "timm":
        import timm

        if timm.is_model(name):
            return None
        return (
            f"unknown timm model {name!r}{did_you_mean(name, _timm_names())}; "
            "`python -m pipeline list models 'timm/*'` lists them"
        )
    if source == "torchvision":
        names = _torchvision_names()  # no timm import
        if name in names:
            return None
        return (
            f"unknown torchvision model {name!r}{did_you_mean(name, names)}; "
            "`python -m pipeline list models 'torchvision/*'` lists them"
        )
    return f"unknown model source {source!r}{did_you_mean(source, ['unet', 'timm', 'torchvision'])}"


def architecture(model: dict[str, Any], *, task: str, num_classes: int, image_size: Any) -> dict[str, Any]:
    """The architecture config a model file records (all that rebuilding it needs)."""
    source = model["source"]
    return {
        "source": source,
        "name": model["name"],
        "task": task,
        "num_classes": num_classes,
        "num_outputs": num_outputs(task, num_classes),
        "in_chans": model["in_chans"],
        "image_size": list(image_size) if isinstance(image_size, (list, tuple)) else [image_size] * 2,
        "unet": model["unet"] if source == "unet" else None,
    }


def _build_problems(params: Params) -> list[Problem]:
    """Build the declared architecture as the model stage will, on the meta device (no memory, no
    weights, no download), find its head and apply ``model.freeze``: a U-Net too deep for its encoder,
    a user factory that fails, a freeze pattern that matches nothing are found here."""
    import torch

    from pipeline.models.finetune import apply_freeze, find_head

    model, task = params.get("model"), params.get("data.task")
    classes = model["num_classes"] or params.get("data.num_classes") or 2  # the head's size cannot fail
    config = architecture(model, task=task, num_classes=classes, image_size=params.get("data.image_size"))
    try:
        with torch.device("meta"):
            net = build_model(config)
        apply_freeze(net, model["freeze"], find_head(net, config["source"]))
        if model["grad_checkpointing"]:
            set_grad_checkpointing(net, f"{config['source']}/{config['name']}")
    except PipelineError as exc:
        return [located(exc, "model")]
    except Exception as exc:  # a user factory or a library may fail in any way
        return [Problem("model", f"building {config['source']}/{config['name']} failed: {one_line(exc)}")]
    return []
