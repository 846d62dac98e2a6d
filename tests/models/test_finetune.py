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
from pipeline.models.initial import initial_model
from pipeline.training.optimizer import parameter_groups
from tests.conftest import REPO
from tests.models.test_networks import TINY_UNET, arch, build


def test_torchvision_vit_head_is_heads_head():
    from torchvision.models import VisionTransformer  # vit_b_16 is 86M parameters: a tiny one suffices

    vit = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    assert find_head(vit, "torchvision") == ["heads.head"]


# --- freezing -------------------------------------------------------------------------------------


def _step(model: nn.Module, info, x: torch.Tensor) -> None:
    groups = parameter_groups(model, info, {"backbone": 1.0, "head": 1.0})
    optimizer = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=0.1)
    model.train()
    model(x).float().pow(2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize(
    "config,x",
    [
        (arch("timm", "resnet10t"), torch.randn(4, 3, 32, 32)),
        (arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET), torch.randn(4, 3, 16, 16)),
    ],
    ids=["timm-resnet10t", "classic-unet"],
)
def test_frozen_backbone_is_bit_identical_after_a_step_and_the_head_moves(config, x):
    model, info, _ = build(config, freeze="backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, info, x)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(info.is_head(k) for k in changed)  # running stats included
    assert {k for k in changed if k.endswith("weight")} == {f"{info.head_prefixes[0]}.weight"}
    assert frozen_batchnorm_layers(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        p.numel() for n, p in model.named_parameters() if info.is_head(n)
    )


@pytest.mark.slow
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
    assert not torch.equal(bn_free.running_mean, stats[2])  # unfrozen BatchNorm still learns
    assert "layer1.0.bn1" in frozen_batchnorm_layers(model) and "layer2.0.bn1" not in frozen_batchnorm_layers(model)
    assert set(info.frozen) == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in info.frozen)


def test_a_freeze_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(PipelineError, match=r"model\.freeze: pattern 'layer9\.\*' matches no parameter"):
        build(arch("timm", "resnet10t"), freeze=["layer1.*", "layer9.*"])


def test_parameter_groups_split_head_and_backbone_and_leave_frozen_out():
    model, info, _ = build(
        arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET), freeze=["encoder.0.*"]
    )
    groups = parameter_groups(model, info, {"backbone": 0.1, "head": 10.0})
    assert [(g["name"], g["lr_mult"]) for g in groups] == [("backbone", 0.1), ("head", 10.0)]
    assert groups[1]["names"] == ["head.weight", "head.bias"]
    assert not any(n.startswith("encoder.0.") for n in groups[0]["names"])
    assert len(groups[0]["names"]) + 2 + len(info.frozen) == len(list(model.parameters()))
    only_head = parameter_groups(*build(arch("timm", "resnet10t"), freeze="backbone")[:2], {"backbone": 1.0})
    assert [g["name"] for g in only_head] == ["head"] and only_head[0]["lr_mult"] == 1.0


def test_frozen_batchnorm_stays_in_eval_after_syncbatchnorm_conversion():
    """DDP's train.sync_batchnorm rebuilds every BatchNorm; a frozen one must keep its eval pin."""
    from pipeline.models.finetune import convert_sync_batchnorm

    model, _, _ = build(arch("timm", "resnet10t"), freeze=["conv1.*", "bn1.*", "layer1.*"])
    converted = convert_sync_batchnorm(model)
    converted.train()
    frozen, free = converted.layer1[0].bn1, converted.layer2[0].bn1
    assert isinstance(frozen, nn.SyncBatchNorm) and isinstance(free, nn.SyncBatchNorm)
    assert not frozen.training and free.training
    stats = frozen.running_mean.clone()
    with torch.no_grad():  # SyncBatchNorm has no CPU kernel in train mode: run the frozen layer alone
        frozen(torch.randn(4, frozen.num_features, 8, 8) * 3 + 1)
    assert torch.equal(frozen.running_mean, stats)


def test_freeze_backbone_freezes_only_what_the_weights_gave(tmp_path):
    """A U-Net whose encoder starts from a classification backbone: backbone = the encoder; the decoder
    (random) and the head train, and the model file carries exactly that."""
    from pipeline.models.file import load_model, save_model
    from pipeline.models.initial import summarize

    torch.save(build(arch("timm", "resnet10t", outputs=10))[0].state_dict(), tmp_path / "resnet10t.pth")
    config = arch(
        "unet",
        "resnet10t",
        task="segmentation",
        outputs=1,
        unet={"base_channels": 4, "depth": 3, "upsampling": "bilinear"},
    )
    model, info, report = build(config, pretrained="resnet10t.pth", freeze="backbone", root=tmp_path)
    names = [n for n, _ in model.named_parameters()]
    assert info.frozen == [n for n in names if n.startswith("encoder.")] and info.frozen
    assert all(p.requires_grad == (not n.startswith("encoder.")) for n, p in model.named_parameters())
    assert not set(info.frozen) & set(report.missing)  # nothing random is frozen
    assert summarize(model, info, report, "0" * 64)["frozen_tensors"] == info.frozen
    save_model(tmp_path / "init.safetensors", model, info)
    again, info2 = load_model(tmp_path / "init.safetensors")
    assert info2.frozen == info.frozen
    assert [n for n, p in again.named_parameters() if not p.requires_grad] == info.frozen


def test_freeze_backbone_without_starting_weights_is_refused():
    with pytest.raises(PipelineError, match=r"model\.freeze: backbone freezes what the starting weights give"):
        initial_model(arch("timm", "resnet10t"), pretrained=False, freeze="backbone", seed=0, root=REPO)
