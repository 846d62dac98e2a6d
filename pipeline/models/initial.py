"""The model training starts from: built (seeded), its starting weights loaded (a file, or torchvision's
or timm's own), a new head fitted, layers frozen; and a summary of what was done."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.hashing import file_sha256
from pipeline.models import weights as weights_io
from pipeline.models.file import ModelInfo
from pipeline.models.finetune import apply_freeze, find_head, freeze_problem, frozen_batchnorm_layers, in_prefixes
from pipeline.models.networks import build_model


def initial_model(
    config: dict[str, Any], *, pretrained: bool | str, freeze: str | list[str], seed: int, root: Path
) -> tuple[nn.Module, ModelInfo, weights_io.LoadReport | None]:
    """Build (seeded), load the starting weights, fit the new head, freeze: the pure core of the stage."""
    problem = freeze_problem(freeze, pretrained)
    if problem:
        raise PipelineError(f"model.freeze: {problem}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, report = _build_with_weights(config, pretrained, root)
    head = find_head(model, config["source"])
    frozen = apply_freeze(model, freeze, head, fresh=report.missing if report is not None else ())
    brief = None if report is None else {"source": report.source, "path": report.path, "sha256": report.sha256}
    return model, ModelInfo(config, head, freeze, brief, frozen), report


def _build_with_weights(
    config: dict[str, Any], pretrained: bool | str, root: Path
) -> tuple[nn.Module, weights_io.LoadReport | None]:
    if pretrained is False:
        return build_model(config), None
    source, name = config["source"], config["name"]
    if pretrained is True and source == "torchvision":
        path = weights_io.torchvision_weights_file(name)
        model = build_model(config)
        report = weights_io.LoadReport("torchvision", str(path), file_sha256(path))
        state = _torchvision_resize(config, weights_io.read_state_dict(path))
        return model, weights_io.apply_state_dict(model, state, head_prefixes=find_head(model, source), report=report)
    if pretrained is True:  # timm classifier or timm-encoder U-Net: timm adapts its own checkpoints
        path = weights_io.timm_weights_file(name)
        report = weights_io.LoadReport("timm", str(path), file_sha256(path))
        return _build_through_timm(config, weights_io.read_state_dict(path), report)
    path = root / pretrained if not Path(pretrained).is_absolute() else Path(pretrained)
    state = weights_io.read_state_dict(path)
    report = weights_io.LoadReport("file", str(pretrained), file_sha256(path))
    if source == "unet" and name != "classic" and not any(k.startswith(("encoder.", "decoder.")) for k in state):
        return _build_through_timm(config, state, report)  # a bare backbone's checkpoint for the encoder
    model = build_model(config)
    return model, weights_io.apply_state_dict(model, state, head_prefixes=find_head(model, source), report=report)


def _build_through_timm(
    config: dict[str, Any], state: dict[str, torch.Tensor], report: weights_io.LoadReport
) -> tuple[nn.Module, weights_io.LoadReport]:
    """timm loads the checkpoint itself (its key filters, classifier drop, in_chans adaptation);
    the file was read here, with ``weights_only=True``."""
    from timm.models import get_pretrained_cfg

    try:
        model = build_model(config, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    except (RuntimeError, KeyError, AssertionError) as exc:
        raise PipelineError(
            f"model.pretrained: timm could not load {report.path} into {config['name']}: {exc}"
        ) from None
    is_unet = config["source"] == "unet"
    for module in model.modules():  # do not keep a second copy of the checkpoint alive
        if isinstance(module_cfg := getattr(module, "pretrained_cfg", None), dict):
            module_cfg.pop("state_dict", None)
    if is_unet:
        pretrained = get_pretrained_cfg(config["name"])
        assert pretrained is not None, "timm has just built the encoder from it"
        cfg = pretrained.to_dict()
    else:  # timm sets it on its models; Module.__getattr__ types attributes as Tensor | Module
        cfg = cast(dict[str, Any], model.pretrained_cfg)
    target = model.state_dict()
    if is_unet:  # features_only keeps the backbone's tensors, some renamed (stem.0 -> stem_0)
        report.dropped = [
            k for k in state if f"encoder.{k}" not in target and f"encoder.{k.replace('.', '_', 1)}" not in target
        ]
    elif config["num_outputs"] != cfg.get("num_classes"):
        classifier = cfg.get("classifier") or ()
        report.dropped = [
            k for k in state if in_prefixes(k, [classifier] if isinstance(classifier, str) else classifier)
        ]
    source_chans = (cfg.get("input_size") or (3,))[0]
    if config["in_chans"] != source_chans:
        report.adapted = [f"{cfg.get('first_conv')}: {source_chans} -> {config['in_chans']} input channels"]
    fresh = (
        [k for k in target if not k.startswith("encoder.")]
        if is_unet
        else [k for k in target if report.dropped and in_prefixes(k, find_head(model, "timm"))]
    )
    report.missing = fresh
    report.loaded = len(target) - len(fresh) - len(report.adapted)
    return model, report


def _torchvision_resize(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViT position embeddings interpolated to the image size (torchvision's own helper)."""
    if not config["name"].startswith("vit_") or "encoder.pos_embedding" not in state:
        return state
    from torchvision.models.vision_transformer import interpolate_embeddings

    patch = int(config["name"].rsplit("_", 1)[-1])
    return dict(interpolate_embeddings(config["image_size"][0], patch, state))


def summarize(
    model: nn.Module, info: ModelInfo, report: weights_io.LoadReport | None, init_sha256: str
) -> dict[str, Any]:
    """The stage's DVC metrics: sizes, what is trained, where the weights came from."""
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    weights = None
    if report is not None:
        weights = report.to_json()
        for key in ("missing", "unexpected"):
            weights[key], weights[f"{key}_examples"] = len(report_list := weights[key]), report_list[:8]
        weights["head_replaced"] = bool(report.dropped)
    config = info.config
    return {
        "architecture": f"{config['source']}/{config['name']}",
        "task": config["task"],
        "num_classes": config["num_classes"],
        "num_outputs": config["num_outputs"],
        "in_chans": config["in_chans"],
        "unet": config["unet"],
        "parameters": {
            "total": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "head": sum(p.numel() for n, p in params if info.is_head(n)),
        },
        "head": info.head_prefixes,
        "freeze": info.freeze,
        "frozen_batchnorm_layers": len(frozen_batchnorm_layers(model)),
        "frozen_tensors": info.frozen,
        "weights": weights,
        "init_sha256": init_sha256,
    }
