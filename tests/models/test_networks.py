"""Building models: every family (torchvision, timm, U-Nets) gives the right output shape and names its
new head, a user factory plugs in, the seed decides the initialisation, and `validate` reports bad names,
wrong families and missing weight files at their keys."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.cli import main as cli_main
from pipeline.models.initial import initial_model
from pipeline.models.networks import num_outputs
from tests.conftest import REPO, problems_by_key, write_params

TINY_UNET = {"base_channels": 4, "depth": 2, "upsampling": "bilinear"}


def arch(
    source: str,
    name: str,
    *,
    task: str = "classification",
    outputs: int = 5,
    in_chans: int = 3,
    size: int = 32,
    unet: dict | None = None,
) -> dict:
    return {
        "source": source,
        "name": name,
        "task": task,
        "num_classes": outputs,
        "num_outputs": outputs,
        "in_chans": in_chans,
        "image_size": [size, size],
        "unet": unet,
    }


def build(config: dict, *, pretrained: bool | str = False, freeze: str | list = "none", root: Path = REPO):
    """The model stage's core. ``freeze="backbone"`` freezes what starting weights give, so without
    ``pretrained`` it starts from a source model of the same architecture (another seed) that covers
    every tensor: the backbone is then all but the head."""
    if freeze == "backbone" and pretrained is False:
        source = initial_model(config, pretrained=False, freeze="none", seed=1, root=root)[0]
        pretrained = str(Path(tempfile.mkdtemp()) / "source.pt")
        torch.save(source.state_dict(), pretrained)
    return initial_model(config, pretrained=pretrained, freeze=freeze, seed=0, root=root)


def test_num_outputs():
    assert num_outputs("segmentation", 2) == 1  # one logit channel, sigmoid
    assert num_outputs("segmentation", 4) == 4
    assert num_outputs("classification", 2) == 2
    assert num_outputs("classification", 10) == 10


# --- every family: shapes and heads ---------------------------------------------------------------

FAMILIES = [
    (arch("torchvision", "resnet18"), ["fc"]),
    (arch("torchvision", "mobilenet_v3_small", in_chans=1), ["classifier.3"]),
    (arch("torchvision", "squeezenet1_0"), ["classifier.1"]),  # a 1x1 conv head
    (arch("timm", "resnet10t", in_chans=4), ["fc"]),
    (arch("timm", "mobilenetv3_small_050"), ["classifier"]),
    (arch("timm", "vit_tiny_patch16_224", size=32), ["head"]),  # built for 32x32 (fixed-size model)
    (arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET), ["head"]),
    (
        arch(
            "unet",
            "mobilenetv3_small_050",
            task="segmentation",
            outputs=3,
            in_chans=1,
            unet={"base_channels": 4, "depth": 3, "upsampling": "transposed"},
        ),
        ["head"],
    ),
]


@pytest.mark.parametrize("config,head", FAMILIES, ids=lambda v: v["name"] if isinstance(v, dict) else None)
def test_output_shape_and_new_head(config, head):
    model, info, report = build(config)
    assert report is None and info.head_prefixes == head
    x = torch.randn(2, config["in_chans"], 32, 32)
    model.eval()
    with torch.no_grad():
        out = model(x)
    expected = (2, config["num_outputs"], 32, 32) if config["task"] == "segmentation" else (2, config["num_outputs"])
    assert tuple(out.shape) == expected
    head_params = [p for n, p in model.named_parameters() if info.is_head(n)]
    assert head_params and head_params[0].shape[0] == config["num_outputs"]


def tiny_classifier(*, num_classes: int, in_chans: int) -> nn.Module:
    """A user model factory, named in params.yaml as 'module.path:attr'."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


def test_user_model_factory_gets_classes_and_channels_and_its_last_layer_is_the_head():
    config = arch("timm", f"{__name__}:tiny_classifier", outputs=3, in_chans=2)
    model, info, _ = build(config, freeze="backbone")
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 3) and info.head_prefixes == ["4"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["4.weight", "4.bias"]


def test_the_seed_decides_the_initialisation():
    config = arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET)
    a, b = build(config)[0], build(config)[0]
    other = initial_model(config, pretrained=False, freeze="none", seed=1, root=REPO)[0]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.head.weight, other.head.weight)


# --- checks ---------------------------------------------------------------------------------------


def test_checks_report_unknown_names_wrong_families_and_missing_files(tmp_path):
    found = problems_by_key(
        write_params(
            tmp_path / "params.yaml",
            link=True,
            **{
                "data.task": "classification",
                "data.root": "data/shapes-cls",
                "model.source": "torchvision",
                "model.name": "resnet181",
                "model.pretrained": "weights/nope.pth",
            },
        )
    )
    assert "did you mean 'resnet18'" in found["model.name"] and "does not exist" in found["model.pretrained"]
    found = problems_by_key(
        write_params(
            tmp_path / "params.yaml",
            link=True,
            **{"model.source": "timm", "model.name": "resnet10t", "model.pretrained": "w.onnx"},
        )
    )
    assert (
        "segmentation needs source: unet" in found["model.source"]
        and "unsupported extension" in found["model.pretrained"]
    )


def test_list_models_shows_every_family(capsys):
    assert cli_main(["list", "models", "timm/resnet10*"]) == 0
    assert "timm/resnet10t" in capsys.readouterr().out.split()
    assert cli_main(["list", "models", "*"]) == 0
    names = capsys.readouterr().out.split()
    assert {"torchvision/resnet18", "torchvision/vit_b_16", "unet/classic"} <= set(names)
