"""The model stage: builders and heads for torchvision, timm and U-Nets; starting weights (local files,
warm library caches, the offline failure); freezing (parameters and BatchNorm statistics); parameter
groups; the initial weights file and the stage end to end."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.hashing import file_sha256
from pipeline.cli import main as cli_main
from pipeline.components import load_params
from pipeline.config.errors import ConfigError, PipelineError
from stages import model as model_stage
from pipeline.models import weights as weights_io
from pipeline.models.finetune import find_head, frozen_batchnorm_layers
from pipeline.training.optimizer import parameter_groups
from pipeline.models.initial import initial_model
from pipeline.models.file import load_model, save_model
from pipeline.models.build import num_outputs

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "weights" / "unet_classic_shapes_boundary.safetensors"
TINY_UNET = {"base_channels": 4, "depth": 2, "upsampling": "bilinear"}


def arch(source: str, name: str, *, task: str = "classification", outputs: int = 5, in_chans: int = 3,
         size: int = 32, unet: dict | None = None) -> dict:
    return {"source": source, "name": name, "task": task, "num_classes": outputs, "num_outputs": outputs,
            "in_chans": in_chans, "image_size": [size, size], "unet": unet}


def build(config: dict, *, pretrained: bool | str = False, freeze: str | list = "none", root: Path = REPO):
    return initial_model(config, pretrained=pretrained, freeze=freeze, seed=0, root=root)


def test_num_outputs():
    assert num_outputs("segmentation", 2) == 1   # one logit channel, sigmoid
    assert num_outputs("segmentation", 4) == 4
    assert num_outputs("classification", 2) == 2
    assert num_outputs("classification", 10) == 10


# --- every family: shapes and heads ---------------------------------------------------------------

FAMILIES = [
    (arch("torchvision", "resnet18"), ["fc"]),
    (arch("torchvision", "mobilenet_v3_small", in_chans=1), ["classifier.3"]),
    (arch("torchvision", "squeezenet1_0"), ["classifier.1"]),   # a 1x1 conv head
    (arch("timm", "resnet10t", in_chans=4), ["fc"]),
    (arch("timm", "mobilenetv3_small_050"), ["classifier"]),
    (arch("timm", "vit_tiny_patch16_224", size=32), ["head"]),  # built for 32x32 (fixed-size model)
    (arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET), ["head"]),
    (arch("unet", "mobilenetv3_small_050", task="segmentation", outputs=3, in_chans=1,
          unet={"base_channels": 4, "depth": 3, "upsampling": "transposed"}), ["head"]),
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
    return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_user_model_factory_gets_classes_and_channels_and_its_last_layer_is_the_head():
    config = arch("timm", f"{__name__}:tiny_classifier", outputs=3, in_chans=2)
    model, info, _ = build(config, freeze="backbone")
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 3) and info.head_prefixes == ["4"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["4.weight", "4.bias"]


def test_torchvision_vit_head_is_heads_head():
    from torchvision.models import VisionTransformer  # vit_b_16 is 86M parameters: a tiny one suffices

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3)
    assert find_head(vit, "torchvision") == ["heads.head"]


def test_the_seed_decides_the_initialisation():
    config = arch("unet", "classic", task="segmentation", outputs=1, unet=TINY_UNET)
    a, b = build(config)[0], build(config)[0]
    other = initial_model(config, pretrained=False, freeze="none", seed=1, root=REPO)[0]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.head.weight, other.head.weight)


# --- freezing ---------------------------------------------------------------------------------------

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


# --- local weights ----------------------------------------------------------------------------------

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
    model, info, report = build(arch("timm", "resnet10t", outputs=3), pretrained=str(tmp_path / "ten.pt"))
    assert report.dropped == ["fc.weight: [10, 512] in the file, [3, 512] in the model",
                              "fc.bias: [10] in the file, [3] in the model"]
    assert report.missing == ["fc.weight", "fc.bias"] and model.fc.out_features == 3
    assert torch.equal(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)


def test_a_unet_encoder_starts_from_a_classification_backbone(tmp_path):
    backbone = build(arch("timm", "resnet10t", outputs=10))[0]
    torch.save(backbone.state_dict(), tmp_path / "resnet10t.pth")
    config = arch("unet", "resnet10t", task="segmentation", outputs=1, in_chans=1,
                  unet={"base_channels": 4, "depth": 3, "upsampling": "bilinear"})
    model, info, report = build(config, pretrained="resnet10t.pth", freeze=["encoder.*"], root=tmp_path)
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
    model, _, report = build(arch("torchvision", "squeezenet1_0", in_chans=in_chans), pretrained=str(tmp_path / "rgb.pth"))
    rgb, adapted = source.features[0].weight, model.features[0].weight
    assert adapted.shape[1] == in_chans and report.adapted == [f"features.0.weight: 3 -> {in_chans} input channels"]
    if in_chans in (1, 6):  # one grey channel, or RGB twice: the response to a grey image is unchanged
        torch.testing.assert_close(adapted.sum(1), rgb.sum(1))
    else:                   # R, G, B, R tiled, scaled by 3/4 (timm's rule)
        torch.testing.assert_close(adapted, torch.cat([rgb, rgb[:, :1]], 1) * 0.75)


def test_weight_file_errors_are_clear(tmp_path):
    config = arch("timm", "resnet10t")
    with pytest.raises(PipelineError, match="does not exist"):
        build(config, pretrained="nowhere.pth", root=tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(1), "callback": Path("x")}, tmp_path / "evil.pt")  # a pickled object
    with pytest.raises(PipelineError, match="weights_only=True"):
        build(config, pretrained="evil.pt", root=tmp_path)
    torch.save(build(arch("timm", "mobilenetv3_small_050"))[0].state_dict(), tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="no tensor of .* matches|does not fit"):
        build(config, pretrained="other.pt", root=tmp_path)
    torch.save(build(arch("timm", "resnet14t"))[0].state_dict(), tmp_path / "resnet14t.pt")
    with pytest.raises(PipelineError, match="does not fit this model; shapes differ"):
        build(config, pretrained="resnet14t.pt", root=tmp_path)


# --- the libraries' weights: warm cache works offline, a cold cache fails fast -------------------

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


@pytest.mark.parametrize("config", [arch("torchvision", "squeezenet1_0"), arch("timm", "resnet10t"),
                                    arch("unet", "resnet10t", task="segmentation", outputs=1, unet=TINY_UNET)],
                         ids=["torchvision", "timm", "unet-timm"])
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
    library = build(arch("torchvision", "squeezenet1_0", outputs=1000))[0]    # stands in for ImageNet weights
    cached = no_network / "torch" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(library.state_dict(), cached)
    model, info, report = build(arch("torchvision", "squeezenet1_0", outputs=4), pretrained=True)
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
    model, info, report = build(arch("timm", "resnet10t", outputs=2, in_chans=1), pretrained=True)
    assert report.source == "timm" and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert report.adapted == ["conv1.0: 3 -> 1 input channels"] and sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer3[0].conv1.weight, library.layer3[0].conv1.weight)
    torch.testing.assert_close(model.conv1[0].weight, library.conv1[0].weight.sum(1, keepdim=True))


# --- the initial weights file ---------------------------------------------------------------------

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


# --- checks and the stage -------------------------------------------------------------------------

def write_params(root: Path, *, task: str = "segmentation", data_classes: int = 2, **model: object) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(task=task, root=str(REPO / "data" / ("shapes-seg" if task == "segmentation" else "shapes-cls")))
    params["model"].update({"unet": TINY_UNET, "pretrained": False, "freeze": "none", **model})
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    names = [f"c{i}" for i in range(data_classes)]  # the model stage reads the task and class count only
    manifest = {"task": task, "root": params["data"]["root"], "num_classes": data_classes, "class_names": names,
                "splits": {"train": [], "val": [], "test": []}, "counts": {}, "fingerprint": "0" * 64}
    (root / "outputs" / "split").mkdir(parents=True, exist_ok=True)
    (root / "outputs" / "split" / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_checks_report_unknown_names_wrong_families_and_missing_files(tmp_path):
    path = write_params(tmp_path, task="classification", source="torchvision", name="resnet181",
                        pretrained="weights/nope.pth")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    found = {p.key: p.message for p in error.value.problems}
    assert "did you mean 'resnet18'" in found["model.name"] and "does not exist" in found["model.pretrained"]
    path = write_params(tmp_path, source="timm", name="resnet10t", pretrained="w.onnx")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    found = {p.key: p.message for p in error.value.problems}
    assert "segmentation needs source: unet" in found["model.source"] and "unsupported extension" in found["model.pretrained"]


def test_list_models_shows_every_family(capsys):
    assert cli_main(["list", "models", "timm/resnet10*"]) == 0
    assert "timm/resnet10t" in capsys.readouterr().out.split()
    assert cli_main(["list", "models", "*"]) == 0
    names = capsys.readouterr().out.split()
    assert {"torchvision/resnet18", "torchvision/vit_b_16", "unet/classic"} <= set(names)


def test_stage_end_to_end_is_deterministic_and_reloadable(tmp_path, capsys):
    path = write_params(tmp_path, freeze=["encoder.0.*"])
    assert model_stage.main(["--params", str(path)]) == 0
    init, summary_file = tmp_path / "outputs/model/init.safetensors", tmp_path / "outputs/model/summary.json"
    first = init.read_bytes()
    summary = json.loads(summary_file.read_text())
    assert summary["architecture"] == "unet/classic" and summary["num_outputs"] == 1
    assert summary["parameters"]["frozen"] == sum(p.numel() for n, p in load_model(init)[0].named_parameters()
                                                  if n.startswith("encoder.0."))
    assert summary["init_sha256"] == file_sha256(init) and summary["weights"] is None
    assert model_stage.main(["--params", str(path)]) == 0
    assert init.read_bytes() == first                                    # same seed, same bytes
    model, info = load_model(init)
    assert model(torch.randn(1, 3, 24, 24)).shape == (1, 1, 24, 24) and info.task == "segmentation"
    assert sorted(load_file(str(init))) == sorted(model.state_dict())


def test_stage_fine_tunes_from_the_shipped_source_weights(tmp_path, capsys):
    """The default pipeline's four steps: the shipped source model (3 classes) loses its head, a new
    1-channel head is built, and everything else is copied."""
    path = write_params(tmp_path, pretrained=str(SHIPPED), unet={"base_channels": 16, "depth": 3, "upsampling": "bilinear"})
    assert model_stage.main(["--params", str(path)]) == 0
    summary = json.loads((tmp_path / "outputs/model/summary.json").read_text())
    weights = summary["weights"]
    assert weights["head_replaced"] and sorted(d.split(":")[0] for d in weights["dropped"]) == ["head.bias", "head.weight"]
    assert weights["missing"] == 2 and weights["sha256"] == file_sha256(SHIPPED)
    source = load_file(str(SHIPPED))
    model, _ = load_model(tmp_path / "outputs/model/init.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items() if not k.startswith("head."))
    assert "dropped 2 tensor(s) that do not fit (the source's head; a new one is trained)" in capsys.readouterr().out


def test_the_default_params_fine_tune_from_the_shipped_file():
    params = load_params(REPO / "params.yaml")
    assert params.resolve_path(params.get("model.pretrained")) == SHIPPED and SHIPPED.stat().st_size < 2 * 2**20
    from safetensors import safe_open
    with safe_open(str(SHIPPED), "pt") as fh:
        made = json.loads(fh.metadata()["source_model"])
        assert fh.get_tensor("head.weight").shape[0] == 3   # the source task's head: 3 classes
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
    assert labels[1, 3] == 2 and labels[0, 3] == 2 and labels[2, 3] == 1   # inner and outer ring
    assert (labels == 1).sum() == 9 and (labels == 2).sum() == 16 + 20


def test_stage_errors_exit_2_with_a_message(tmp_path, capsys):
    path = write_params(tmp_path)
    (tmp_path / "outputs/split/manifest.json").unlink()
    assert model_stage.main(["--params", str(path)]) == 2
    assert "run the split stage first" in capsys.readouterr().err
    path = write_params(tmp_path, data_classes=4, num_classes=2)
    assert model_stage.main(["--params", str(path)]) == 2
    assert "model.num_classes: 2 is fewer than the 4 classes" in capsys.readouterr().err
    path = write_params(tmp_path, freeze=["encoders.*"])
    assert model_stage.main(["--params", str(path)]) == 2
    assert "model.freeze: pattern 'encoders.*' matches no parameter" in capsys.readouterr().err
    assert not (tmp_path / "outputs/model/init.safetensors").exists()
