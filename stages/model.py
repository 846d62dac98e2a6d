"""The model stage: build the network, load its starting weights, give it a new head, freeze what is
asked, and write the initial weights training starts from (``outputs/model/init.safetensors``).

The file carries its own recipe in safetensors metadata (architecture, head, freezing, weights
sha256), so :func:`load_initial_model` rebuilds the module without reading params.yaml, and a change
to the loss or optimizer never re-runs this stage. Fine-tuning is the four textbook steps: a source
model trained on a source task (``model.pretrained``), copy all but its output layer (a head of
another shape is dropped), a new output layer (built with this task's outputs), train on the target.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import atomic_path, write_json
from pipeline.checks import semantic_check
from pipeline.config import Params, ParamsView
from pipeline.errors import PipelineError, Problem
from pipeline.registry import Registry, import_object, is_import_path
from pipeline.schema import did_you_mean
from pipeline.stage import run_stage
from stages import pretrained as weights_io
from stages.finetune import apply_freeze, find_head, frozen_batchnorm_layers, in_prefixes, replace_first_conv
from stages.unet import ClassicUNet, TimmUNet

PARAMS = ("model.source", "model.name", "model.num_classes", "model.in_chans", "model.pretrained",
          "model.freeze", "model.unet", "data.image_size", "train.seed")
MANIFEST = "outputs/split/manifest.json"
INIT_FILE = "outputs/model/init.safetensors"
SUMMARY_FILE = "outputs/model/summary.json"
META_KEY = "yamltrain.model"  # one key: safetensors stores metadata in a hash map, so several would reorder


def num_outputs(task: str, num_classes: int) -> int:
    """Output units of the head: one logit channel for binary segmentation (sigmoid), else one per
    class (softmax)."""
    return 1 if task == "segmentation" and num_classes == 2 else num_classes


# --- registry ----------------------------------------------------------------------------------

def build_torchvision(config: dict[str, Any]) -> nn.Module:
    """torchvision classification model (new head: fc, classifier's last layer, or heads)."""
    import torchvision

    name, extra = config["name"], {}
    if name in ("inception_v3", "googlenet"):
        extra["aux_logits"] = False  # auxiliary outputs would turn the logits into a tuple
    if name.startswith("vit_"):
        height, width = config["image_size"]
        if height != width:
            raise PipelineError(f"model.name: torchvision {name} needs square images, got data.image_size {config['image_size']}")
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
    return timm.create_model(config["name"], num_classes=config["num_outputs"], in_chans=config["in_chans"],
                             **timm_kwargs)


def build_unet(config: dict[str, Any], **timm_kwargs: Any) -> nn.Module:
    """U-Net: name classic, or any timm backbone with features_only as the encoder (unet/<timm name>)."""
    unet = config["unet"]
    common = dict(in_chans=config["in_chans"], num_outputs=config["num_outputs"],
                  base_channels=unet["base_channels"], depth=unet["depth"], upsampling=unet["upsampling"])
    if config["name"] == "classic":
        return ClassicUNet(**common)
    try:
        return TimmUNet(config["name"], **common, **timm_kwargs)
    except ValueError as exc:
        raise PipelineError(f"model.name: {exc}") from None


def _provide_models() -> dict[str, Any]:
    import timm
    import torchvision

    found: dict[str, Any] = {f"torchvision/{n}": build_torchvision
                             for n in torchvision.models.list_models(module=torchvision.models)}
    found.update({f"timm/{n}": build_timm for n in timm.list_models()})
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


# --- semantic checks (cheap: no model is built) -------------------------------------------------

def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


@semantic_check("model", "data")
def check_model(params: Params) -> list[Problem]:
    """The model exists for its source and task; a pretrained path exists and is a weight file."""
    model, task = params.get("model"), params.get("data.task")
    source, name, problems = model["source"], model["name"], []
    if task == "segmentation" and source != "unet":
        problems.append(Problem("model.source", f"{source} builds classifiers; segmentation needs "
                                "source: unet (name: classic, or a timm backbone as the encoder)"))
    if task == "classification" and source == "unet":
        problems.append(Problem("model.source", "a U-Net segments; classification needs torchvision or timm"))
    if not is_import_path(name):
        if source == "unet" and name != "classic":
            import timm
            if not timm.is_model(name):
                problems.append(Problem("model.name", f"unknown U-Net encoder {name!r}"
                                        f"{did_you_mean(name, ['classic', *_timm_names()])}; use classic or a "
                                        "timm backbone (`python -m pipeline list models 'timm/*'`)"))
        elif source == "timm":
            import timm
            if not timm.is_model(name):
                problems.append(Problem("model.name", f"unknown timm model {name!r}{did_you_mean(name, _timm_names())}; "
                                        "`python -m pipeline list models 'timm/*'` lists them"))
        elif source == "torchvision" and f"torchvision/{name}" not in MODELS:
            names = [n.split("/", 1)[1] for n in MODELS.names() if n.startswith("torchvision/")]
            problems.append(Problem("model.name", f"unknown torchvision model {name!r}{did_you_mean(name, names)}; "
                                    "`python -m pipeline list models 'torchvision/*'` lists them"))
    pretrained = model["pretrained"]
    if pretrained is True and source == "unet" and name == "classic":
        problems.append(Problem("model.pretrained", "the classic U-Net has no library weights; use false or "
                                "a path to a .pt/.pth/.safetensors state dict"))
    if isinstance(pretrained, str):
        path = params.resolve_path(pretrained)
        if path.suffix not in weights_io.SUFFIXES:
            problems.append(Problem("model.pretrained", f"{pretrained!r}: unsupported extension; expected "
                                    f"{', '.join(weights_io.SUFFIXES)}"))
        elif not path.is_file():
            problems.append(Problem("model.pretrained", f"weight file {str(path)!r} does not exist"))
    return problems


# --- the initial model file --------------------------------------------------------------------

@dataclass
class ModelInfo:
    """How an initial model was made: enough to rebuild it and to split its parameters."""

    config: dict[str, Any]
    head_prefixes: list[str]
    freeze: str | list[str] = "none"
    weights: dict[str, Any] | None = None     # source, path, sha256 of the starting weights
    frozen: list[str] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        """Logit channels (1 for binary segmentation)."""
        return int(self.config["num_outputs"])

    @property
    def task(self) -> str:
        return str(self.config["task"])

    def is_head(self, name: str) -> bool:
        return in_prefixes(name, self.head_prefixes)

    def metadata(self) -> dict[str, str]:
        values = {"version": 1, "arch": self.config, "head_prefixes": self.head_prefixes, "freeze": self.freeze,
                  "weights": self.weights}
        return {META_KEY: json.dumps(values, sort_keys=True)}


def parameter_groups(model: nn.Module, info: ModelInfo, lr_mult: dict[str, float]) -> list[dict[str, Any]]:
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


def initial_model(config: dict[str, Any], *, pretrained: bool | str, freeze: str | list[str], seed: int,
                  root: Path) -> tuple[nn.Module, ModelInfo, weights_io.LoadReport | None]:
    """Build (seeded), load the starting weights, fit the new head, freeze: the pure core of the stage."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, report = _build_with_weights(config, pretrained, root)
    head = find_head(model, config["source"])
    frozen = apply_freeze(model, freeze, head)
    brief = None if report is None else {"source": report.source, "path": report.path, "sha256": report.sha256}
    return model, ModelInfo(config, head, freeze, brief, frozen), report


def _build_with_weights(config: dict[str, Any], pretrained: bool | str,
                        root: Path) -> tuple[nn.Module, weights_io.LoadReport | None]:
    if pretrained is False:
        return build_model(config), None
    source, name = config["source"], config["name"]
    if pretrained is True and source == "torchvision":
        path = weights_io.torchvision_weights_file(name)
        model = build_model(config)
        report = weights_io.LoadReport("torchvision", str(path), weights_io.file_sha256(path))
        state = _torchvision_resize(config, weights_io.read_state_dict(path))
        return model, weights_io.apply_state_dict(model, state, head_prefixes=find_head(model, source), report=report)
    if pretrained is True:  # timm classifier or timm-encoder U-Net: timm adapts its own checkpoints
        path = weights_io.timm_weights_file(name)
        report = weights_io.LoadReport("timm", str(path), weights_io.file_sha256(path))
        return _build_through_timm(config, weights_io.read_state_dict(path), report)
    path = root / pretrained if not Path(pretrained).is_absolute() else Path(pretrained)
    state = weights_io.read_state_dict(path)
    report = weights_io.LoadReport("file", str(pretrained), weights_io.file_sha256(path))
    if source == "unet" and name != "classic" and not any(k.startswith(("encoder.", "decoder.")) for k in state):
        return _build_through_timm(config, state, report)  # a bare backbone's checkpoint for the encoder
    model = build_model(config)
    return model, weights_io.apply_state_dict(model, state, head_prefixes=find_head(model, source), report=report)


def _build_through_timm(config: dict[str, Any], state: dict[str, torch.Tensor],
                        report: weights_io.LoadReport) -> tuple[nn.Module, weights_io.LoadReport]:
    """timm loads the checkpoint itself (its key filters, classifier drop, in_chans adaptation);
    the file was read here, with ``weights_only=True``."""
    from timm.models import get_pretrained_cfg

    try:
        model = build_model(config, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    except (RuntimeError, KeyError, AssertionError) as exc:
        raise PipelineError(f"model.pretrained: timm could not load {report.path} into {config['name']}: {exc}") from None
    is_unet = config["source"] == "unet"
    for module in model.modules():  # do not keep a second copy of the checkpoint alive
        if isinstance(getattr(module, "pretrained_cfg", None), dict):
            module.pretrained_cfg.pop("state_dict", None)
    cfg = model.pretrained_cfg if not is_unet else get_pretrained_cfg(config["name"]).to_dict()
    target = model.state_dict()
    if is_unet:  # features_only keeps the backbone's tensors, some renamed (stem.0 -> stem_0)
        report.dropped = [k for k in state if f"encoder.{k}" not in target
                          and f"encoder.{k.replace('.', '_', 1)}" not in target]
    elif config["num_outputs"] != cfg.get("num_classes"):
        classifier = cfg.get("classifier") or ()
        report.dropped = [k for k in state if in_prefixes(k, [classifier] if isinstance(classifier, str) else classifier)]
    source_chans = (cfg.get("input_size") or (3,))[0]
    if config["in_chans"] != source_chans:
        report.adapted = [f"{cfg.get('first_conv')}: {source_chans} -> {config['in_chans']} input channels"]
    fresh = [k for k in target if not k.startswith("encoder.")] if is_unet else \
        [k for k in target if report.dropped and in_prefixes(k, find_head(model, "timm"))]
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


# --- the stage -----------------------------------------------------------------------------------

def read_manifest(view: ParamsView) -> dict[str, Any]:
    """The split manifest's task and class count (the data's truth, resolved by the split stage)."""
    path = view.resolve_path(MANIFEST)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the split stage first (`dvc repro split`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable split manifest ({exc}); re-run `dvc repro split`") from None
    missing = [k for k in ("task", "num_classes") if k not in manifest]
    if missing:
        raise PipelineError(f"{path}: the split manifest lacks {', '.join(missing)}; re-run `dvc repro split`")
    return manifest


def architecture(view: ParamsView, manifest: dict[str, Any]) -> dict[str, Any]:
    """The architecture config recorded in the initial weights (all that rebuilding needs)."""
    task, data_classes, wanted = manifest["task"], int(manifest["num_classes"]), view["model.num_classes"]
    if wanted is not None and wanted < data_classes:
        raise PipelineError(f"model.num_classes: {wanted} is fewer than the {data_classes} classes in the data "
                            f"({MANIFEST}); use null to follow the data")
    classes = wanted or data_classes
    source = view["model.source"]
    return {"source": source, "name": view["model.name"], "task": task, "num_classes": classes,
            "num_outputs": num_outputs(task, classes), "in_chans": view["model.in_chans"],
            "image_size": list(view["data.image_size"]), "unet": view["model.unet"] if source == "unet" else None}


def save_model(path: str | Path, model: nn.Module, info: ModelInfo) -> str:
    """Write the weights with their recipe as safetensors metadata (atomically), so
    :func:`load_initial_model` can rebuild them (initial, best or last weights alike); returns the
    file's sha256. A ``torch.compile`` wrapper, device placement and channels_last are undone."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)
    state = {k.removeprefix("_orig_mod."): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=info.metadata())
    return weights_io.file_sha256(path)


save_initial_model = save_model  # the name train uses for its best/last weights


def load_initial_model(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the module from the file's metadata, load its weights, re-apply the freezing."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the model stage first (`dvc repro model`)")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if META_KEY not in meta:
        raise PipelineError(f"{path} was not written by the model stage (no {META_KEY!r} metadata)")
    values = json.loads(meta[META_KEY])
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the caller's RNG alone
        model = build_model(values["arch"])
    model.load_state_dict(load_file(str(path)), strict=True)
    frozen = apply_freeze(model, values["freeze"], values["head_prefixes"])
    return model, ModelInfo(values["arch"], values["head_prefixes"], values["freeze"], values["weights"], frozen)


def summarize(model: nn.Module, info: ModelInfo, report: weights_io.LoadReport | None,
              init_sha256: str) -> dict[str, Any]:
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
    return {"architecture": f"{config['source']}/{config['name']}", "task": config["task"],
            "num_classes": config["num_classes"], "num_outputs": config["num_outputs"],
            "in_chans": config["in_chans"], "unet": config["unet"],
            "parameters": {"total": total, "trainable": trainable, "frozen": total - trainable,
                           "head": sum(p.numel() for n, p in params if info.is_head(n))},
            "head": info.head_prefixes, "freeze": info.freeze,
            "frozen_batchnorm_layers": len(frozen_batchnorm_layers(model)),
            "weights": weights, "init_sha256": init_sha256}


def run(view: ParamsView) -> None:
    """Build the model, load its starting weights, fit the new head, freeze; write the initial
    weights (outputs/model/init.safetensors) and their summary (outputs/model/summary.json)."""
    config = architecture(view, read_manifest(view))
    model, info, report = initial_model(config, pretrained=view["model.pretrained"], freeze=view["model.freeze"],
                                        seed=view["train.seed"], root=view.root)
    init_sha256 = save_model(view.resolve_path(INIT_FILE), model, info)
    summary = summarize(model, info, report, init_sha256)
    write_json(view.resolve_path(SUMMARY_FILE), summary)
    counts = summary["parameters"]
    print(f"model: {summary['architecture']} -> {config['num_outputs']} output(s); {counts['total']:,} parameters, "
          f"{counts['trainable']:,} trainable; head {', '.join(info.head_prefixes)}")
    if report is not None:
        print(f"model: weights {report.path} (sha256 {report.sha256[:12]}): {report.loaded} tensors loaded"
              + (f"; dropped {len(report.dropped)} tensor(s) that do not fit (the source's head; a new one is trained): "
                 f"{', '.join(d.split(':')[0] for d in report.dropped[:6])}" if report.dropped else "")
              + (f"; adapted {'; '.join(report.adapted)}" if report.adapted else "")
              + (f"; {len(report.missing)} tensor(s) start random" if report.missing else ""))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("model", PARAMS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
