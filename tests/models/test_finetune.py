"""Fine-tuning: the head of each family is found, a frozen backbone stays bit-identical through a step
(BatchNorm statistics included, also after deepcopy), a freeze pattern must match, and parameter groups
split head from backbone and leave frozen parameters out."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.models.finetune import find_head, frozen_batchnorm_layers
from pipeline.training.optimizer import parameter_groups
from tests.models.test_build import TINY_UNET, arch, build


def test_torchvision_vit_head_is_heads_head():
    from torchvision.models import VisionTransformer  # vit_b_16 is 86M parameters: a tiny one suffices

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3)
    assert find_head(vit, "torchvision") == ["heads.head"]


# --- freezing -------------------------------------------------------------------------------------

def _step(model: nn.Module, info, x: torch.Tensor) -> None:
    groups = parameter_groups(model, info, {"backbone": 1.0, "head": 1.0})
    optimizer = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=0.1)
    model.train()
    model(x).float().pow(2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("config,x", [
    (arch("timm", "resnet10t"), torch.randn(4, 3, 32, 32)),
    (arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET), torch.randn(4, 3, 16, 16)),
], ids=["timm-resnet10t", "classic-unet"])
def test_frozen_backbone_is_bit_identical_after_a_step_and_the_head_moves(config, x):
    model, info, _ = build(config, freeze="backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, info, x)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(info.is_head(k) for k in changed)          # running stats included
    assert {k for k in changed if k.endswith("weight")} == {f"{info.head_prefixes[0]}.weight"}
    assert frozen_batchnorm_layers(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        sum(p.numel() for n, p in model.named_parameters() if info.is_head(n))


def test_frozen_batchnorm_statistics_survive_train_mode_and_deepcopy():
    model, info, _ = build(arch("timm", "resnet10t"), freeze=["conv1.*", "bn1.*", "layer1.*"])
    bn_frozen, bn_free = model.layer1[0].bn1, model.layer2[0].bn1
    stats = (bn_frozen.running_mean.clone(), bn_frozen.running_var.clone(), bn_free.running_mean.clone())
    for candidate in (model, copy.deepcopy(model)):
        candidate.train()
        for _ in range(3):
            candidate(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn_frozen.running_mean, stats[0]) and torch.equal(bn_frozen.running_var, stats[1])
    assert not bn_frozen.training and model.training and bn_free.training
    assert not torch.equal(bn_free.running_mean, stats[2])   # unfrozen BatchNorm still learns
    assert "layer1.0.bn1" in frozen_batchnorm_layers(model) and "layer2.0.bn1" not in frozen_batchnorm_layers(model)
    assert set(info.frozen) == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in info.frozen)


def test_a_freeze_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(PipelineError, match=r"model\.freeze: pattern 'layer9\.\*' matches no parameter"):
        build(arch("timm", "resnet10t"), freeze=["layer1.*", "layer9.*"])


def test_parameter_groups_split_head_and_backbone_and_leave_frozen_out():
    model, info, _ = build(arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET),
                           freeze=["encoder.0.*"])
    groups = parameter_groups(model, info, {"backbone": 0.1, "head": 10.0})
    assert [(g["name"], g["lr_mult"]) for g in groups] == [("backbone", 0.1), ("head", 10.0)]
    assert groups[1]["names"] == ["head.weight", "head.bias"]
    assert not any(n.startswith("encoder.0.") for n in groups[0]["names"])
    assert len(groups[0]["names"]) + 2 + len(info.frozen) == len(list(model.parameters()))
    only_head = parameter_groups(*build(arch("timm", "resnet10t"), freeze="backbone")[:2], {"backbone": 1.0})
    assert [g["name"] for g in only_head] == ["head"] and only_head[0]["lr_mult"] == 1.0
