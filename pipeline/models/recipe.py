"""The recipe a model file carries, checked before anything is built from it: a file is data.

A model file (ours, or one a stranger sent) rebuilds its network from the recipe in its metadata.
Everything in it is checked first, with the rules params.yaml obeys (``schemas/model_file.schema.json``
refers to the params sections): a malformed recipe is one line naming the file and the key, never a
traceback or a gigabyte allocation. The architecture is named as data only, a source and a name that
source's registry holds; a ``module.path:attr`` name would import and run that module, so it loads
only with ``trust_code`` (``--trust-code``), which the error says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config.dotted import is_import_path
from pipeline.config.errors import PipelineError
from pipeline.config.schema import value_problems

FORMAT_VERSION = 3  # 2 adds class_names, preprocess and threshold; 3 tile (native-resolution inference)
TILE_FREE_VERSION = 2  # what a file without tile says it is: readable by code from before version 3
SCHEMA = "model_file.schema.json"
UNET_KEYS = ("base_channels", "depth", "upsampling")
TRUST_HINT = (
    "pass --trust-code to predict or export (MLflow: model_config={'trust_code': True}, or "
    "YAMLTRAIN_TRUST_CODE=1 for `mlflow models serve`) only if you trust the file and that code"
)


def parse_recipe(text: str, where: str | Path) -> dict[str, Any]:
    """The recipe JSON of a model file as a dict, its version readable by this code."""
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise PipelineError(f"{where}: its recipe is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise PipelineError(f"{where}: its recipe is a JSON {type(values).__name__}, not an object")
    version = values.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PipelineError(f"{where}: recipe version {version!r} is not a format version (1, 2, ...)")
    if version > FORMAT_VERSION:
        raise PipelineError(
            f"{where} is a model file of format {version}, newer than this code reads "
            f"({FORMAT_VERSION}); update the pipeline"
        )
    return values


def check_recipe(values: dict[str, Any], where: str | Path, *, trust_code: bool = False) -> None:
    """Refuse a recipe that does not describe a model this code builds from data alone: schema
    problems, an architecture no registry holds (or user code without ``trust_code``), head sizes
    that contradict the task, class names that do not fit."""
    problems = [f"{p.key}: {p.message}" if p.key else p.message for p in value_problems(SCHEMA, values)]
    if problems:
        raise PipelineError(
            f"{where}: invalid recipe: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    arch = values["arch"]
    name, source, task = arch["name"], arch["source"], arch["task"]
    code = [name] if is_import_path(name) else []
    code += user_code_names(values.get("eval_augment") or [])
    if code and not trust_code:
        raise PipelineError(
            f"{where}: names user code ({', '.join(repr(c) for c in code[:3])}); loading it would "
            f"import and run that module, so it is refused; {TRUST_HINT}"
        )
    if not is_import_path(name):
        from pipeline.models.networks import unknown_model

        if (task == "segmentation") != (source == "unet"):
            raise PipelineError(f"{where}: invalid recipe: arch.source: {source} does not build {task} models")
        unknown = unknown_model(source, name)
        if unknown:
            raise PipelineError(f"{where}: invalid recipe: arch.name: {unknown}")
    from pipeline.models.networks import num_outputs

    expected = num_outputs(task, arch["num_classes"])
    if arch["num_outputs"] != expected:
        raise PipelineError(
            f"{where}: invalid recipe: arch.num_outputs is {arch['num_outputs']} but {task} with "
            f"{arch['num_classes']} classes has {expected}"
        )
    names = values.get("class_names") or []
    if task != "segmentation" and len(names) > arch["num_classes"]:  # fewer are padded (ModelInfo.classes)
        raise PipelineError(
            f"{where}: invalid recipe: class_names lists {len(names)} names for {arch['num_classes']} classes"
        )
    if source == "unet" and not is_import_path(name):
        missing = sorted(set(UNET_KEYS) - set(arch.get("unet") or {}))
        if missing:
            raise PipelineError(f"{where}: invalid recipe: arch.unet: a U-Net needs {', '.join(missing)}")


def user_code_names(spec: Any) -> list[str]:
    """The ``module.path:attr`` augmenter names in an augmentation spec (dict keys and list items, at
    any depth: containers nest their children), which building it would import."""
    if isinstance(spec, dict):
        return [k for k in spec if is_import_path(str(k))] + [n for v in spec.values() for n in user_code_names(v)]
    if isinstance(spec, list):
        return [
            n
            for item in spec
            for n in ([item] if isinstance(item, str) and is_import_path(item) else user_code_names(item))
        ]
    return []
