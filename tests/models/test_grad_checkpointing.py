"""``model.grad_checkpointing``: the same gradients with and without (the classic U-Net, a timm model, a
U-Net with a timm encoder), the recomputation really happening in training only, BatchNorm's running
statistics updated once per step as without it, export untouched, and models without it refused at
``model.grad_checkpointing``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.config.params import Params
from pipeline.models import networks
from pipeline.models.unet import ClassicUNet, TimmUNet
from tests.conftest import SHIPPED_PARAMS


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).float().square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _forward_calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _same_step(plain: nn.Module, probe: str) -> tuple[nn.Module, list[int], list[int]]:
    """``plain`` and a copy with checkpointing on, both in training mode, give equal gradients on one
    batch; returns the copy and how often the ``probe`` submodule ran in each (the copy recomputes)."""
    torch.manual_seed(0)
    checkpointed = copy.deepcopy(plain)
    networks.set_grad_checkpointing(checkpointed, "the model")
    plain.train(), checkpointed.train()
    x = torch.randn(2, 3, 32, 32)
    runs_plain = _forward_calls(plain.get_submodule(probe))
    runs_checkpointed = _forward_calls(checkpointed.get_submodule(probe))
    expected, got = _grads(plain, x), _grads(checkpointed, x)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    return checkpointed, runs_plain, runs_checkpointed


def test_classic_unet_same_gradients_and_batchnorm_statistics_recomputing_its_encoder():
    torch.manual_seed(0)
    plain = ClassicUNet(in_chans=3, num_outputs=2, base_channels=4, depth=2)
    checkpointed, runs_plain, runs_checkpointed = _same_step(plain, "encoder.1.0")
    assert (len(runs_plain), len(runs_checkpointed)) == (1, 2)  # the block ran again in the backward pass
    for name, buffer in plain.named_buffers():  # running mean/var and the batch counter: updated once
        torch.testing.assert_close(checkpointed.get_buffer(name), buffer, msg=name)


def test_a_timm_model_and_a_timm_encoder_same_gradients():
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    _, runs_plain, runs_checkpointed = _same_step(classifier, "layer2.0.conv1")
    assert (len(runs_plain), len(runs_checkpointed)) == (1, 2)
    unet = TimmUNet("test_resnet", in_chans=3, num_outputs=1, base_channels=4, depth=3)
    _, runs_plain, runs_checkpointed = _same_step(unet, "encoder.layer1.0.conv1")
    assert (len(runs_plain), len(runs_checkpointed)) == (1, 2)


def test_checkpointing_is_for_training_only_so_evaluation_and_export_see_the_plain_model():
    torch.manual_seed(0)
    model = ClassicUNet(in_chans=3, num_outputs=1, base_channels=4, depth=2)
    networks.set_grad_checkpointing(model, "the model")
    runs = _forward_calls(model.get_submodule("encoder.1.0"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # training mode without gradients: nothing to recompute for
        model.train()(x)
    model.eval()
    model(x).sum().backward()  # eval mode with gradients (saliency): no checkpoint either
    assert len(runs) == 2
    reference = model(x).detach()
    traced = torch.jit.trace(model, x, check_trace=False)  # the TorchScript export
    torch.testing.assert_close(traced(x), reference)
    exported = torch.export.export(model, (x,))  # what the ONNX exporter (dynamo=True) starts from
    torch.testing.assert_close(exported.module()(x), reference)


def _params(tmp_path: Path, **model: object) -> Params:
    values = yaml.safe_load(SHIPPED_PARAMS.read_text())
    values["model"].update({"pretrained": False, "grad_checkpointing": True, **model})
    return Params(values, tmp_path / "params.yaml")


def test_models_without_checkpointing_are_refused_at_the_key(tmp_path):
    assert networks.check_model(_params(tmp_path)) == []  # the classic U-Net has it
    data_task = {"source": "torchvision", "name": "resnet18"}
    values = _params(tmp_path, **data_task)
    values.data["data"]["task"] = "classification"
    [problem] = networks.check_model(values)
    assert problem.key == "model.grad_checkpointing"
    assert problem.message.startswith("torchvision/resnet18 does not support gradient checkpointing")
    [problem] = networks.check_model(_params(tmp_path, name="test_vit"))  # its features_only wrapper has none
    assert problem.key == "model.grad_checkpointing" and "encoder (FeatureGetterNet)" in problem.message
    with pytest.raises(PipelineError, match=r"^model\.grad_checkpointing: plain does not support"):
        networks.set_grad_checkpointing(nn.Linear(2, 2), "plain")
