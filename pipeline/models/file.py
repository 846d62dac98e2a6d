"""The model file: safetensors weights with their recipe in one metadata key, so :func:`load_model`
rebuilds the module without params.yaml, and predict, export and the MLflow Model need nothing else:
the architecture, task and class names, the head and what is frozen, where the starting weights came
from, and the preprocessing (image size, normalisation, the evaluation augmentation) and threshold.
The model stage's initial weights and train's best weights are such files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.config.building import one_line
from pipeline.config.errors import PipelineError
from pipeline.hashing import file_sha256
from pipeline.models.finetune import apply_freeze, in_prefixes
from pipeline.models.networks import build_model
from pipeline.models.recipe import FORMAT_VERSION, TILE_FREE_VERSION, check_recipe, parse_recipe

META_KEY = "yamltrain.model"  # one key: safetensors stores metadata in a hash map, so several would reorder
# ImageNet statistics: what torchvision and timm pretrained weights expect, and harmless otherwise. The
# file records them; batches are normalised with them on the device (pipeline.models.input_contract).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """How a model was made and how it is used: enough to rebuild it, split its parameters, and
    prepare an image for it exactly as evaluation does."""

    config: dict[str, Any]
    head_prefixes: list[str]
    freeze: str | list[str] = "none"
    weights: dict[str, Any] | None = None  # source, path, sha256 of the starting weights
    frozen: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    eval_augment: list[Any] = field(default_factory=list)  # augment.eval, applied after the resize
    threshold: float | dict[str, float] = 0.5  # binary: foreground where sigmoid > it; multilabel: per class
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # data.resize none: how to infer on a whole image (pipeline.models.tiling.tile_settings); None: resize
    tile: dict[str, Any] | None = None

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) images are resized to."""
        height, width = self.config["image_size"]
        return int(height), int(width)

    @property
    def classes(self) -> list[str]:
        """The class names (``class_<i>`` for files written before they were recorded)."""
        names = list(self.class_names or [])
        return names + [f"class_{i}" for i in range(len(names), int(self.config["num_classes"]))]

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
        return {META_KEY: json.dumps(self.recipe(), sort_keys=True)}

    def recipe(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data (also what export and MLflow carry)."""
        # a file without tiling keeps version 2, so code from before tiling still reads it
        return {
            "version": FORMAT_VERSION if self.tile else TILE_FREE_VERSION,
            "arch": self.config,
            "head_prefixes": self.head_prefixes,
            "freeze": self.freeze,
            "frozen": self.frozen,
            "weights": self.weights,
            "class_names": self.classes,
            "eval_augment": self.eval_augment,
            "threshold": self.threshold,
            "mean": list(self.mean),
            "std": list(self.std),
            **({"tile": self.tile} if self.tile else {}),
        }

    @classmethod
    def from_recipe(cls, values: dict[str, Any], frozen: list[str]) -> ModelInfo:
        return cls(
            values["arch"],
            values["head_prefixes"],
            values["freeze"],
            values["weights"],
            frozen,
            class_names=values.get("class_names"),
            eval_augment=list(values.get("eval_augment") or []),
            threshold=_threshold(values.get("threshold", 0.5)),
            mean=tuple(values.get("mean") or IMAGENET_MEAN),
            std=tuple(values.get("std") or IMAGENET_STD),
            tile=values.get("tile"),
        )


def _threshold(value: Any) -> float | dict[str, float]:
    """A recipe's threshold: one number, or (multilabel) a ``{class: value}`` mapping."""
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)


def save_model(path: str | Path, model: nn.Module, info: ModelInfo) -> str:
    """Write the weights with their recipe as safetensors metadata (atomically), so
    :func:`load_model` can rebuild them (initial, best or last weights alike); returns the
    file's sha256. A ``torch.compile`` wrapper, device placement and channels_last are undone."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)
    state = {k.removeprefix("_orig_mod."): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=info.metadata())
    return file_sha256(path)


def load_model(path: str | Path, *, trust_code: bool = False) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the module from the file's metadata, load its weights, re-apply the freezing. The recipe
    is checked first (:func:`~pipeline.models.recipe.check_recipe`; user code needs ``trust_code``),
    then the tensors' shapes against the architecture built on the meta device, so a file that does
    not fit is refused before any memory is spent on it."""
    from safetensors.torch import load_file

    path = Path(path)
    values = read_recipe(path)
    check_recipe(values, path, trust_code=trust_code)
    try:
        with torch.device("meta"):
            skeleton = build_model(values["arch"])
        _check_tensors(path, {name: tuple(t.shape) for name, t in skeleton.state_dict().items()})
        with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the caller's RNG alone
            model = build_model(values["arch"])
        model.load_state_dict(load_file(str(path)), strict=True)
        # The exact tensors frozen when the file was made ("backbone" depends on what the starting weights
        # covered, which only the model stage knew); files from before the list was recorded re-derive it.
        recorded = values.get("frozen")
        freeze = recorded if recorded else values["freeze"] if recorded is None else "none"
        frozen = apply_freeze(model, freeze, values["head_prefixes"])
    except PipelineError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    except Exception as exc:  # a builder, a user factory or safetensors may fail in any way
        raise PipelineError(f"{path}: cannot rebuild the model from its recipe ({one_line(exc)})") from None
    return model, ModelInfo.from_recipe(values, frozen)


def _check_tensors(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The file holds exactly the tensors the recipe's architecture has, each of its shape."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        stored = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118 (not iterable)
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = [
        f"{name} is {list(stored[name])}, the architecture's {list(shape)}"
        for name, shape in expected.items()
        if name in stored and stored[name] != shape
    ]
    if missing or extra or wrong:
        parts = (
            ([f"missing {', '.join(missing[:3])}"] if missing else [])
            + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
            + wrong[:3]
        )
        raise PipelineError(f"its tensors do not fit the recipe's architecture: {'; '.join(parts)}")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a model file (no weights are read), its version readable by this code."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such model file")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors' own errors on a file of another kind
        raise PipelineError(f"{path}: not a safetensors model file ({one_line(exc)})") from None
    if META_KEY not in meta:
        raise PipelineError(
            f"{path} was not written by this pipeline (no {META_KEY!r} metadata); the model "
            "stage and train write such files (outputs/train/best.safetensors)"
        )
    return parse_recipe(meta[META_KEY], path)
