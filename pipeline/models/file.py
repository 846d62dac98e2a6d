"""The model file: safetensors weights with their recipe in one metadata key (architecture, task,
head, freezing, where the starting weights came from), so :func:`load_model` rebuilds the module
without params.yaml. The model stage's initial weights and train's best weights are such files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.config.errors import PipelineError
from pipeline.hashing import file_sha256
from pipeline.models.build import build_model
from pipeline.models.finetune import apply_freeze, in_prefixes


META_KEY = "yamltrain.model"  # one key: safetensors stores metadata in a hash map, so several would reorder


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
                  "frozen": self.frozen, "weights": self.weights}
        return {META_KEY: json.dumps(values, sort_keys=True)}


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


def load_model(path: str | Path) -> tuple[nn.Module, ModelInfo]:
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
    # The exact tensors frozen when the file was made ("backbone" depends on what the starting weights
    # covered, which only the model stage knew); files from before the list was recorded re-derive it.
    recorded = values.get("frozen")
    freeze = recorded if recorded else values["freeze"] if recorded is None else "none"
    frozen = apply_freeze(model, freeze, values["head_prefixes"])
    return model, ModelInfo(values["arch"], values["head_prefixes"], values["freeze"], values["weights"], frozen)
