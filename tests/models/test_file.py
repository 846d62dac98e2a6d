"""The model file: the initial weights round-trip with the module, its freezing and its recipe."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config.errors import PipelineError
from pipeline.models.file import load_model, save_model
from tests.models.test_build import TINY_UNET, arch, build


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
    with pytest.raises(PipelineError, match="not written by the model stage"):
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
