"""The model file: the initial weights round-trip with the module, its freezing and its recipe."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config.errors import PipelineError
from pipeline.models.file import load_model, save_model
from tests.models.test_networks import TINY_UNET, arch, build


def test_save_and_load_initial_model_rebuilds_module_freezing_and_info(tmp_path):
    config = arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET)
    model, info, _ = build(config, freeze=["encoder.*"])
    compiled = torch.compile(model)  # train may save a compiled model: the wrapper must not leak into names
    save_model(tmp_path / "init.safetensors", compiled, info)
    again, info2 = load_model(tmp_path / "init.safetensors")
    assert info2.config == config and info2.head_prefixes == ["head"] and info2.num_outputs == 1
    assert info2.freeze == ["encoder.*"] and info2.frozen == info.frozen
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    again.train()
    assert not again.encoder[0][1].training and again.decoder[0].conv[1].training
    with pytest.raises(PipelineError, match="was not written by this pipeline"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        load_model(tmp_path / "plain.safetensors")


def test_weight_files_get_the_mode_of_every_other_output(tmp_path):
    """safetensors writes owner-only files; an output must be as readable as the others."""
    import os

    from pipeline.atomic import write_text

    model, info, _ = build(arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET))
    save_model(tmp_path / "init.safetensors", model, info)
    write_text(tmp_path / "other.json", "{}")
    mode = (tmp_path / "other.json").stat().st_mode & 0o777
    assert (tmp_path / "init.safetensors").stat().st_mode & 0o777 == mode
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_the_file_carries_what_predict_needs_and_older_files_still_load(tmp_path):
    import json

    from safetensors import safe_open

    from pipeline.models.file import META_KEY

    config = arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET)
    model, info, _ = build(config)
    info.class_names, info.eval_augment, info.threshold = ["background", "car"], ["Fliplr"], 0.4
    save_model(tmp_path / "m.safetensors", model, info)
    _, again = load_model(tmp_path / "m.safetensors")
    assert again.classes == ["background", "car"] and again.eval_augment == ["Fliplr"] and again.threshold == 0.4
    assert again.image_hw == (32, 32) and again.mean == (0.485, 0.456, 0.406) and again.std == (0.229, 0.224, 0.225)
    # A version-1 file (before the recipe held classes and preprocessing) loads with the defaults.
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as fh:
        recipe = json.loads(fh.metadata()[META_KEY])
    old = {k: recipe[k] for k in ("arch", "head_prefixes", "freeze", "weights")} | {"version": 1}
    save_file(model.state_dict(), str(tmp_path / "v1.safetensors"), metadata={META_KEY: json.dumps(old)})
    _, v1 = load_model(tmp_path / "v1.safetensors")
    assert v1.classes == [f"class_{i}" for i in range(config["num_classes"])]
    assert v1.eval_augment == [] and v1.threshold == 0.5
