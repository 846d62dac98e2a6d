"""Both U-Nets: output shapes for odd sizes and both up-samplings, the head is the last 1x1 conv,
and a timm encoder takes its weights from a backbone checkpoint."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.unet import ClassicUNet, TimmUNet


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
@pytest.mark.parametrize("size", [(32, 32), (37, 50)])
def test_classic_unet_keeps_the_input_size(upsampling, size):
    model = ClassicUNet(in_chans=2, num_outputs=3, base_channels=4, depth=3, upsampling=upsampling)
    out = model(torch.randn(2, 2, *size))
    assert out.shape == (2, 3, *size)
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 3
    assert len(model.encoder) == 4 and len(model.decoder) == 3


def test_classic_unet_size_follows_base_channels_and_depth():
    small = sum(p.numel() for p in ClassicUNet(in_chans=3, num_outputs=1, base_channels=4, depth=2).parameters())
    wide = sum(p.numel() for p in ClassicUNet(in_chans=3, num_outputs=1, base_channels=8, depth=2).parameters())
    deep = sum(p.numel() for p in ClassicUNet(in_chans=3, num_outputs=1, base_channels=4, depth=3).parameters())
    assert 3.5 * small < wide < 4.5 * small  # conv weights scale with channels squared
    assert deep > 3 * small  # the new level has 4x the channels of the last


def test_classic_unet_rejects_an_unknown_upsampling():
    with pytest.raises(ValueError, match="upsampling"):
        ClassicUNet(in_chans=3, num_outputs=1, upsampling="nearest")


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_timm_unet_output_shape_and_names(upsampling):
    model = TimmUNet("resnet10t", in_chans=1, num_outputs=2, base_channels=4, depth=4, upsampling=upsampling)
    assert model(torch.randn(1, 1, 40, 56)).shape == (1, 2, 40, 56)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"encoder", "decoder", "final", "head"}
    assert model.encoder.feature_info.reduction() == [2, 4, 8, 16]
    assert model.encoder.conv1[0].in_channels == 1


def test_timm_unet_too_deep_for_the_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="depth 6"):
        TimmUNet("resnet10t", in_chans=3, num_outputs=1, depth=6)


def test_timm_unet_encoder_loads_a_backbone_state_dict_through_timm():
    import timm

    source = timm.create_model("resnet10t", num_classes=7)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = TimmUNet(
        "resnet10t", in_chans=3, num_outputs=1, depth=3, pretrained=True, pretrained_cfg_overlay={"state_dict": state}
    )
    assert torch.equal(model.encoder.conv1[0].weight, state["conv1.0.weight"])
    assert torch.equal(model.encoder.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
