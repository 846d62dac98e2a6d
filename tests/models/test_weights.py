"""Starting weights: local .pt/.pth/.safetensors files (a head of another shape dropped, input channels
adapted, a U-Net encoder from a classification backbone, clear errors), the libraries' weights from a
warm cache without network and a fast failure with a cold one, and the shipped source weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config.errors import PipelineError
from pipeline.config.params import load_params
from pipeline.hashing import file_sha256
from pipeline.models import weights as weights_io
from pipeline.models.initial import initial_model
from tests.conftest import REPO
from tests.models.test_networks import TINY_UNET, arch, build

SHIPPED = REPO / "weights" / "unet_classic_shapes_boundary.safetensors"


# --- local weights --------------------------------------------------------------------------------


def test_local_weights_round_trip_pt_and_safetensors(tmp_path):
    config = arch("timm", "resnet10t")
    source = build(config)[0]
    state = source.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        model, info, report = initial_model(config, pretrained=name, freeze="none", seed=1, root=tmp_path)
        assert all(torch.equal(model.state_dict()[k], state[k]) for k in state), name
        assert report.loaded == len(state) and not (report.dropped or report.missing or report.adapted)
        assert report.sha256 == file_sha256(tmp_path / name) and info.weights["sha256"] == report.sha256


def test_a_head_of_another_shape_is_dropped_and_reported(tmp_path):
    source = build(arch("timm", "resnet10t", outputs=10))[0]
    torch.save(source.state_dict(), tmp_path / "ten.pt")
    model, _info, report = build(arch("timm", "resnet10t", outputs=3), pretrained=str(tmp_path / "ten.pt"))
    assert report.dropped == [
        "fc.weight: [10, 512] in the file, [3, 512] in the model",
        "fc.bias: [10] in the file, [3] in the model",
    ]
    assert report.missing == ["fc.weight", "fc.bias"] and model.fc.out_features == 3
    assert torch.equal(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)


def test_a_unet_encoder_starts_from_a_classification_backbone(tmp_path):
    backbone = build(arch("timm", "resnet10t", outputs=10))[0]
    torch.save(backbone.state_dict(), tmp_path / "resnet10t.pth")
    config = arch(
        "unet",
        "resnet10t",
        task="segmentation",
        outputs=1,
        in_chans=1,
        unet={"base_channels": 4, "depth": 3, "upsampling": "bilinear"},
    )
    model, _info, report = build(config, pretrained="resnet10t.pth", freeze=["encoder.*"], root=tmp_path)
    # depth 3 uses the backbone down to layer2: the deeper stages and the classifier are dropped
    assert {k.split(".")[0] for k in report.dropped} == {"layer3", "layer4", "fc"}
    assert report.adapted == ["conv1.0: 3 -> 1 input channels"]
    assert report.missing and all(k.startswith(("decoder.", "final.", "head.")) for k in report.missing)
    assert torch.equal(model.encoder.layer2[0].conv1.weight, backbone.layer2[0].conv1.weight)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder."))


@pytest.mark.parametrize("in_chans", [1, 4, 6])
def test_input_convolution_is_adapted_to_other_channel_counts(tmp_path, in_chans):
    source = build(arch("torchvision", "squeezenet1_0"))[0]
    torch.save(source.state_dict(), tmp_path / "rgb.pth")
    model, _, report = build(
        arch("torchvision", "squeezenet1_0", in_chans=in_chans), pretrained=str(tmp_path / "rgb.pth")
    )
    rgb, adapted = source.features[0].weight, model.features[0].weight
    assert adapted.shape[1] == in_chans and report.adapted == [f"features.0.weight: 3 -> {in_chans} input channels"]
    if in_chans in (1, 6):  # one grey channel, or RGB twice: the response to a grey image is unchanged
        torch.testing.assert_close(adapted.sum(1), rgb.sum(1))
    else:  # R, G, B, R tiled, scaled by 3/4 (timm's rule)
        torch.testing.assert_close(adapted, torch.cat([rgb, rgb[:, :1]], 1) * 0.75)


def test_weight_file_errors_are_clear(tmp_path):
    config = arch("timm", "resnet10t")
    with pytest.raises(PipelineError, match="does not exist"):
        build(config, pretrained="nowhere.pth", root=tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(1), "callback": Path("x")}, tmp_path / "evil.pt")  # a pickled object
    with pytest.raises(PipelineError, match=r"refused: it holds pickled Python objects \(pathlib.PosixPath\)"):
        build(config, pretrained="evil.pt", root=tmp_path)
    torch.save(build(arch("timm", "mobilenetv3_small_050"))[0].state_dict(), tmp_path / "other.pt")
    with pytest.raises(PipelineError, match=r"no tensor of .* matches|does not fit"):
        build(config, pretrained="other.pt", root=tmp_path)
    torch.save(build(arch("timm", "resnet14t"))[0].state_dict(), tmp_path / "resnet14t.pt")
    with pytest.raises(PipelineError, match="does not fit this model; shapes differ"):
        build(config, pretrained="resnet14t.pt", root=tmp_path)


# --- the libraries' weights: warm cache works offline, a cold cache fails fast --------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty caches, and every connection refused as on a machine without network."""
    import huggingface_hub.constants as hf_constants

    def refuse(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable (simulated)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("socket.create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path


@pytest.mark.parametrize(
    "config",
    [
        arch("torchvision", "squeezenet1_0"),
        arch("timm", "resnet10t"),
        arch("unet", "resnet10t", task="segmentation", outputs=1, unet=TINY_UNET),
    ],
    ids=["torchvision", "timm", "unet-timm"],
)
def test_pretrained_true_offline_fails_fast_saying_how_to_supply_a_file(no_network, config):
    started = time.perf_counter()
    with pytest.raises(PipelineError) as error:
        build(config, pretrained=True)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert message.startswith("model.pretrained: true needs") and "Network is unreachable" in message
    assert "set `model.pretrained: weights/" in message and "download https://" in message


def test_pretrained_true_offline_mode_never_touches_the_network(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match=r"offline mode is set \(HF_HUB_OFFLINE=1\)"):
        weights_io.timm_weights_file("resnet10t")


def test_torchvision_weights_come_from_a_warm_cache_without_network(no_network):
    import torchvision

    url = torchvision.models.get_model_weights("squeezenet1_0").DEFAULT.url
    library = build(arch("torchvision", "squeezenet1_0", outputs=1000))[0]  # stands in for ImageNet weights
    cached = no_network / "torch" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(library.state_dict(), cached)
    model, _info, report = build(arch("torchvision", "squeezenet1_0", outputs=4), pretrained=True)
    assert report.source == "torchvision" and report.path == str(cached)
    assert [d.split(":")[0] for d in report.dropped] == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(model.features[0].weight, library.features[0].weight)


def test_timm_weights_come_from_a_warm_hub_cache_without_network(no_network):
    library = build(arch("timm", "resnet10t", outputs=1000))[0]
    snapshot = no_network / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abc")
    save_file({k: v.contiguous() for k, v in library.state_dict().items()}, str(snapshot / "model.safetensors"))
    model, _info, report = build(arch("timm", "resnet10t", outputs=2, in_chans=1), pretrained=True)
    assert report.source == "timm" and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert report.adapted == ["conv1.0: 3 -> 1 input channels"] and sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer3[0].conv1.weight, library.layer3[0].conv1.weight)
    torch.testing.assert_close(model.conv1[0].weight, library.conv1[0].weight.sum(1, keepdim=True))


# --- the shipped source weights -------------------------------------------------------------------


def test_the_default_params_fine_tune_from_the_shipped_file():
    params = load_params(REPO / "params.yaml")
    assert params.resolve_path(params.get("model.pretrained")) == SHIPPED and SHIPPED.stat().st_size < 2 * 2**20
    from safetensors import safe_open

    with safe_open(str(SHIPPED), "pt") as fh:
        made = json.loads(fh.metadata()["source_model"])
        assert fh.get_tensor("head.weight").shape[0] == 3  # the source task's head: 3 classes
    assert made["architecture"] == {"source": "unet", "name": "classic", **params.get("model.unet")}


def test_source_task_labels_interior_and_a_two_pixel_boundary():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_source_weights", REPO / "scripts" / "make_source_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    mask = torch.zeros(7, 7, dtype=torch.uint8)
    mask[1:6, 1:6] = 255
    labels = script.boundary_labels(mask.numpy())
    assert labels[3, 3] == 1 and labels[0, 0] == 0
    assert labels[1, 3] == 2 and labels[0, 3] == 2 and labels[2, 3] == 1  # inner and outer ring
    assert (labels == 1).sum() == 9 and (labels == 2).sum() == 16 + 20
