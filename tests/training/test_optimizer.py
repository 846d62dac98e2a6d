"""Optimizers: every torch.optim optimizer builds and steps, parameter groups get lr * lr_mult and the
no-decay split, unusable ones are refused, and validate reports bad arguments at their key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.training.optimizer import UNSUPPORTED, build_optimizer, optimizers
from tests.conftest import REPO, problems_by_key, write_params


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _groups(model: nn.Sequential, backbone_mult: float = 0.1, head_mult: float = 1.0) -> list[dict]:
    """Like the model stage's parameter_groups: backbone = conv + bn, head = the linear layer."""
    named = list(model.named_parameters())
    back = [(n, p) for n, p in named if not n.startswith("3.")]
    head = [(n, p) for n, p in named if n.startswith("3.")]
    return [
        {"params": [p for _, p in back], "names": [n for n, _ in back], "lr_mult": backbone_mult, "name": "backbone"},
        {"params": [p for _, p in head], "names": [n for n, _ in head], "lr_mult": head_mult, "name": "head"},
    ]


def _cfg(name: str = "AdamW", lr: float = 0.01, no_decay: bool = True, **params) -> dict:
    return {"name": name, "lr": lr, "params": params, "no_decay_norm_bias": no_decay}


@pytest.mark.parametrize("name", optimizers.names())
def test_every_torch_optimizer_builds_and_steps(name: str) -> None:
    model = _model()
    optimizer = build_optimizer(_cfg(name, lr=0.01), _groups(model))
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 3, 6, 6)).pow(2).mean().backward()
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(moved), f"{name} left parameters unchanged"
    assert sorted(g["name"] for g in optimizer.param_groups)[0] == "backbone"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unusable_optimizers_are_refused_with_a_reason(name: str) -> None:
    # LBFGS needs a closure, SparseAdam sparse gradients, Muon 2-D parameters only.
    assert name not in optimizers.names()
    with pytest.raises(PipelineError, match=name):
        build_optimizer(_cfg(name), _groups(_model()))


def test_groups_get_lr_times_mult_and_the_no_decay_split() -> None:
    model = _model()
    optimizer = build_optimizer(_cfg("AdamW", lr=0.01, weight_decay=0.05), _groups(model, 0.1, 2.0))
    got = {
        (g["name"], g["no_decay"]): (g["lr"], g["weight_decay"], g["lr_mult"], g["names"])
        for g in optimizer.param_groups
    }
    assert got == {
        ("backbone", False): (pytest.approx(0.001), 0.05, 0.1, ["0.weight"]),
        ("backbone", True): (pytest.approx(0.001), 0.0, 0.1, ["1.weight", "1.bias"]),
        ("head", False): (pytest.approx(0.02), 0.05, 2.0, ["3.weight"]),
        ("head", True): (pytest.approx(0.02), 0.0, 2.0, ["3.bias"]),
    }
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_weight_decay_really_skips_no_decay_params() -> None:
    model = _model()
    optimizer = build_optimizer(_cfg("SGD", lr=0.1, weight_decay=0.5), _groups(model, 1.0, 1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients: only weight decay moves a parameter (p -= lr * wd * p)
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.05))
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["3.bias"], before["3.bias"])


def test_without_split_every_group_decays() -> None:
    optimizer = build_optimizer(_cfg("SGD", lr=0.1, no_decay=False, weight_decay=0.5), _groups(_model(), 0.5, 1.0))
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("backbone", 0.05, 0.5),
        ("head", 0.1, 0.5),
    ]


def test_frozen_groups_dropped_and_all_frozen_refused() -> None:
    model = _model()
    groups = _groups(model)
    groups[0]["params"], groups[0]["names"] = [], []
    optimizer = build_optimizer(_cfg(), groups)
    assert {g["name"] for g in optimizer.param_groups} == {"head"}
    groups[1]["params"], groups[1]["names"] = [], []
    with pytest.raises(PipelineError, match="no trainable parameters"):
        build_optimizer(_cfg(), groups)


def test_optimizer_without_weight_decay_is_not_split() -> None:
    optimizer = build_optimizer(_cfg("Rprop", lr=0.01), _groups(_model()))
    assert len(optimizer.param_groups) == 2 and all(not g["no_decay"] for g in optimizer.param_groups)


def test_user_optimizer_by_import_path() -> None:
    optimizer = build_optimizer(_cfg("torch.optim:SGD", momentum=0.9), _groups(_model()))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize(
    "optimizer,key,needle",
    [
        ({"name": "SGD", "params": {"momentun": 0.9}}, "optimizer.params.momentun", "did you mean 'momentum'"),
        ({"name": "AdamWW", "params": {}}, "optimizer.name", "did you mean 'AdamW'"),
        ({"name": "AdamW", "params": {"lr": 0.1}}, "optimizer.params.lr", "optimizer.lr"),
        ({"name": "LBFGS", "params": {}}, "optimizer.name", "closure"),
        ({"name": "torch.optim:Nope", "params": {}}, "optimizer.name", "has no attribute"),
    ],
)
def test_validate_optimizer_errors(tmp_path: Path, optimizer: dict, key: str, needle: str) -> None:
    path = write_params(tmp_path / "params.yaml", **{f"optimizer.{k}": v for k, v in optimizer.items()})
    assert needle in problems_by_key(path, "optimizer")[key]


def test_validate_accepts_good_arguments(tmp_path: Path) -> None:
    good = {"name": "SGD", "params": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}}
    path = write_params(tmp_path / "params.yaml", **{f"optimizer.{k}": v for k, v in good.items()})
    assert problems_by_key(path, "optimizer") == {}
    assert problems_by_key(REPO / "params.yaml", "optimizer") == {}
