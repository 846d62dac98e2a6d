"""Losses: every registered loss on binary and multi-class inputs, the focal reference, hand-computed
Dice/IoU/Tversky (pooled and per sample), empty masks, user losses, and validate-time errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.config.errors import PipelineError
from pipeline.training.losses import BINARY, MULTICLASS, build_loss, losses
from tests.conftest import REPO, problems_by_key, write_params

SINGLE = [n for n in losses.names() if n != "sum"]


def _logit(p: list[float]) -> torch.Tensor:
    p_t = torch.tensor(p, dtype=torch.float64)
    return torch.log(p_t / (1 - p_t)).float()


def _inputs(mode: str, shape: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = 1 if mode == BINARY else 3
    size = (4, c, 5, 5) if shape == "seg" else (6, c)
    logits = torch.randn(size, generator=g)
    target_shape = (size[0],) + size[2:]
    target = torch.randint(0, 2 if mode == BINARY else c, target_shape, generator=g).to(torch.uint8)
    return logits, target


def _cfg(name: str, **params) -> dict:
    return {"name": name, "params": params, "terms": []}


@pytest.mark.parametrize("shape", ["seg", "cls"])
@pytest.mark.parametrize("mode", [BINARY, MULTICLASS])
@pytest.mark.parametrize("name", SINGLE)
def test_every_loss_gives_finite_scalar_and_gradient(name: str, mode: str, shape: str) -> None:
    logits, target = _inputs(mode, shape)
    num_outputs = logits.shape[1]
    if mode not in losses.get(name).supports:
        with pytest.raises(PipelineError, match=name):
            build_loss(_cfg(name), task="segmentation", num_outputs=num_outputs)
        return
    loss_fn = build_loss(_cfg(name), task="segmentation", num_outputs=num_outputs)
    logits.requires_grad_(True)
    value = loss_fn(logits, target)
    assert value.shape == () and value.dtype == torch.float32
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_binary_only_losses_refuse_multiclass_with_a_hint() -> None:
    with pytest.raises(PipelineError, match="cross_entropy"):
        build_loss(_cfg("dice_bce"), task="segmentation", num_outputs=3)


@pytest.mark.parametrize("alpha", [None, 0.25, 0.8])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_binary_focal_equals_torchvision(alpha: float | None, gamma: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 4
    target = torch.randint(0, 2, (3, 8, 8), generator=g)
    ours = build_loss(_cfg("focal", gamma=gamma, alpha=alpha), task="segmentation", num_outputs=1)(logits, target)
    ref = sigmoid_focal_loss(
        logits, target.unsqueeze(1).float(), alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="mean"
    )
    assert abs(ours.item() - ref.item()) < 1e-6


def test_multiclass_focal_is_per_element() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, 6, 6, generator=g) * 3
    target = torch.randint(0, 3, (4, 6, 6), generator=g)
    ce = F.cross_entropy(logits, target, reduction="none")
    expected = (ce * (1 - torch.exp(-ce)) ** 2).mean()
    focal = build_loss(_cfg("focal", gamma=2.0), task="segmentation", num_outputs=3)
    assert abs(focal(logits, target).item() - expected.item()) < 1e-6
    # The wrong tutorial version (focal factor on the batch-mean CE) differs.
    wrong = ce.mean() * (1 - torch.exp(-ce.mean())) ** 2
    assert abs(focal(logits, target).item() - wrong.item()) > 1e-3
    gamma0 = build_loss(_cfg("focal", gamma=0.0), task="segmentation", num_outputs=3)
    assert abs(gamma0(logits, target).item() - F.cross_entropy(logits, target).item()) < 1e-6
    alpha = [0.2, 0.3, 0.5]
    weighted = build_loss(_cfg("focal", gamma=2.0, alpha=alpha), task="segmentation", num_outputs=3)
    expected_w = (torch.tensor(alpha)[target] * ce * (1 - torch.exp(-ce)) ** 2).mean()
    assert abs(weighted(logits, target).item() - expected_w.item()) < 1e-6


# Two 2x2 binary images. Image A: p = .9 .1 / .8 .2, target 1 0 / 1 0 -> TP 1.7, FP .3, FN .3.
# Image B: p = .5 everywhere, target all 1 -> TP 2, FP 0, FN 2. Pooled: TP 3.7, FP .3, FN 2.3.
HAND_P = _logit([0.9, 0.1, 0.8, 0.2, 0.5, 0.5, 0.5, 0.5]).reshape(2, 1, 2, 2)
HAND_T = torch.tensor([1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.uint8).reshape(2, 2, 2)
HAND = [  # name, params, pooled loss, per-sample loss
    ("dice", {}, 1 - 7.4 / 10.0, 1 - (3.4 / 4.0 + 4.0 / 6.0) / 2),
    ("iou", {}, 1 - 3.7 / 6.3, 1 - (1.7 / 2.3 + 2.0 / 4.0) / 2),
    (
        "tversky",
        {},
        1 - 3.7 / (3.7 + 0.3 * 0.3 + 0.7 * 2.3),
        1 - (1.7 / (1.7 + 0.3 * 0.3 + 0.7 * 0.3) + 2.0 / (2.0 + 0.7 * 2.0)) / 2,
    ),
    ("tversky", {"alpha": 0.5, "beta": 0.5}, 1 - 7.4 / 10.0, 1 - (3.4 / 4.0 + 4.0 / 6.0) / 2),
]


@pytest.mark.parametrize("name,params,pooled,per_sample", HAND)
def test_overlap_losses_hand_computed(name: str, params: dict, pooled: float, per_sample: float) -> None:
    for flag, expected in ((False, pooled), (True, per_sample)):
        loss = build_loss(_cfg(name, smooth=0.0, per_sample=flag, **params), task="segmentation", num_outputs=1)
        assert loss(HAND_P, HAND_T).item() == pytest.approx(expected, abs=1e-6)
    default = build_loss(_cfg(name, smooth=0.0, **params), task="segmentation", num_outputs=1)
    assert default(HAND_P, HAND_T).item() == pytest.approx(pooled, abs=1e-6)  # pooled is the default


def test_dice_smooth_and_dice_bce_hand_computed() -> None:
    dice = build_loss(_cfg("dice"), task="segmentation", num_outputs=1)  # smooth 1.0
    assert dice(HAND_P, HAND_T).item() == pytest.approx(1 - 8.4 / 11.0, abs=1e-6)
    bce = F.binary_cross_entropy_with_logits(HAND_P, HAND_T.unsqueeze(1).float()).item()
    combo = build_loss(_cfg("dice_bce", bce_weight=0.5, dice_weight=2.0), task="segmentation", num_outputs=1)
    assert combo(HAND_P, HAND_T).item() == pytest.approx(0.5 * bce + 2.0 * (1 - 8.4 / 11.0), abs=1e-6)


def test_multiclass_dice_hand_computed() -> None:
    # Hard predictions 0 1 1 2 for targets 0 1 2 2: per class dice 1, 2/3, 2/3.
    pred, target = torch.tensor([0, 1, 1, 2]), torch.tensor([[0, 1, 2, 2]])
    logits = (F.one_hot(pred, 3).T.float() * 40).reshape(1, 3, 1, 4)
    target = target.reshape(1, 1, 4)
    with_bg = build_loss(_cfg("dice", smooth=0.0), task="segmentation", num_outputs=3)
    assert with_bg(logits, target).item() == pytest.approx(1 - (1 + 2 / 3 + 2 / 3) / 3, abs=1e-6)
    without = build_loss(_cfg("dice", smooth=0.0, include_background=False), task="segmentation", num_outputs=3)
    assert without(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    iou = build_loss(_cfg("iou", smooth=0.0), task="segmentation", num_outputs=3)
    assert iou(logits, target).item() == pytest.approx(1 - (1 + 0.5 + 0.5) / 3, abs=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("name", ["dice", "iou", "tversky", "dice_bce", "focal", "bce"])
def test_empty_target_never_nan(name: str, per_sample: bool) -> None:
    params = {"per_sample": per_sample} if name in ("dice", "iou", "tversky", "dice_bce") else {}
    loss = build_loss(_cfg(name, **params), task="segmentation", num_outputs=1)
    target = torch.zeros(2, 8, 8, dtype=torch.uint8)
    empty_pred = torch.full((2, 1, 8, 8), -30.0, requires_grad=True)
    value = loss(empty_pred, target)
    value.backward()
    assert torch.isfinite(value) and value.item() < 1e-6 and torch.isfinite(empty_pred.grad).all()
    full_pred = torch.full((2, 1, 8, 8), 30.0)
    assert torch.isfinite(loss(full_pred, target)) and loss(full_pred, target).item() > 0.5


def test_cross_entropy_options_match_torch() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[0, 0, :2] = 255
    loss = build_loss(
        _cfg("cross_entropy", weight=[1.0, 2.0, 0.5], label_smoothing=0.1, ignore_index=255),
        task="segmentation",
        num_outputs=3,
    )
    expected = F.cross_entropy(
        logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1, ignore_index=255
    )
    assert loss(logits, target.to(torch.uint8)).item() == pytest.approx(expected.item(), abs=1e-6)


def test_per_class_weights_must_match_the_classes() -> None:
    with pytest.raises(PipelineError, match="2 per-class weights for 3 classes"):
        build_loss(_cfg("cross_entropy", weight=[1.0, 2.0]), task="segmentation", num_outputs=3)
    with pytest.raises(PipelineError, match="alpha"):
        build_loss(_cfg("focal", alpha=[0.1, 0.9]), task="segmentation", num_outputs=1)


def test_weighted_sum_of_terms() -> None:
    logits, target = _inputs(BINARY, "seg")
    cfg = {
        "name": "sum",
        "params": {},
        "terms": [
            {"name": "dice", "weight": 1.0, "params": {}},
            {"name": "focal", "weight": 0.5, "params": {"gamma": 1.0}},
        ],
    }
    total = build_loss(cfg, task="segmentation", num_outputs=1)(logits, target)
    dice = build_loss(_cfg("dice"), task="segmentation", num_outputs=1)(logits, target)
    focal = build_loss(_cfg("focal", gamma=1.0), task="segmentation", num_outputs=1)(logits, target)
    assert total.item() == pytest.approx(dice.item() + 0.5 * focal.item(), abs=1e-6)


def test_losses_compute_in_float32_under_autocast() -> None:
    logits, target = _inputs(MULTICLASS, "seg")
    loss = build_loss(_cfg("focal"), task="segmentation", num_outputs=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits.to(torch.bfloat16), target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(logits.to(torch.bfloat16).float(), target).item(), abs=1e-6)


def test_user_loss_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    logits, target = _inputs(BINARY, "seg")
    cls_loss = build_loss(_cfg("tests.user_losses:ScaledL1", scale=3.0), task="segmentation", num_outputs=1)
    expected = 3.0 * (torch.sigmoid(logits) - target.unsqueeze(1).float()).abs().mean()
    assert cls_loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    logits, target = _inputs(MULTICLASS, "cls")
    fn_loss = build_loss(_cfg("tests.user_losses:margin_loss", margin=0.5), task="classification", num_outputs=3)
    expected = F.multi_margin_loss(logits, target.long(), margin=0.5)
    assert fn_loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


# --- validate-time errors, through load_params on a temp copy of params.yaml -----------------------


def test_validate_reports_loss_param_typos_at_their_key(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", **{"loss.name": "focal", "loss.params": {"gama": 2}})
    problems = problems_by_key(path, "loss")
    assert "did you mean 'gamma'" in problems["loss.params.gama"]


def test_validate_reports_terms_problems_at_their_index(tmp_path: Path) -> None:
    terms = [
        {"name": "dice", "params": {"smoth": 1}},
        {"name": "focall"},
        {"name": "iou", "params": {"per_sample": True}},
    ]
    path = write_params(tmp_path / "params.yaml", loss={"name": "sum", "params": {}, "terms": terms})
    problems = problems_by_key(path, "loss")
    assert "did you mean 'smooth'" in problems["loss.terms[0].params.smoth"]
    assert "did you mean 'focal'" in problems["loss.terms[1].name"]
    assert set(problems) == {"loss.terms[0].params.smoth", "loss.terms[1].name"}


@pytest.mark.parametrize(
    "loss,key,needle",
    [
        ({"name": "sum", "terms": []}, "loss.terms", "at least one term"),
        ({"name": "dice", "terms": [{"name": "bce"}]}, "loss.terms", "only used with name: sum"),
        ({"name": "dice_bcee"}, "loss.name", "did you mean 'dice_bce'"),
        ({"name": "tests.user_losses:Nope"}, "loss.name", "has no attribute"),
        ({"name": "tests.user_losses:ScaledL1", "params": {"scael": 2}}, "loss.params.scael", "did you mean 'scale'"),
        (
            {"name": "tests.user_losses:margin_loss", "params": {"margn": 2}},
            "loss.params.margn",
            "did you mean 'margin'",
        ),
    ],
)
def test_validate_loss_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss: dict, key: str, needle: str
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    problems = problems_by_key(write_params(tmp_path / "params.yaml", loss={"params": {}, "terms": [], **loss}), "loss")
    assert needle in problems[key]


def test_validate_loss_vs_task(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    multi = {"data.task": "segmentation", "data.num_classes": 3}
    problems = problems_by_key(write_params(path, **multi, **{"loss.name": "bce"}), "loss")
    assert "binary" in problems["loss.name"]
    problems = problems_by_key(write_params(path, **{"loss.name": "cross_entropy", "data.num_classes": 2}), "loss")
    assert "binary (one logit channel)" in problems["loss.name"]
    assert problems_by_key(write_params(path, **multi, **{"loss.name": "focal"}), "loss") == {}
    problems = problems_by_key(
        write_params(path, **multi, **{"loss.name": "cross_entropy", "loss.params": {"weight": [1, 2]}}), "loss"
    )
    assert "2 per-class weights for 3 classes" in problems["loss.params.weight"]
    problems = problems_by_key(
        write_params(path, **{"loss.name": "focal", "loss.params": {"alpha": [0.5, 0.5]}}), "loss"
    )
    assert "one number" in problems["loss.params.alpha"]
    assert (
        problems_by_key(write_params(path, **{"loss.name": "dice_bce", "loss.params": {"per_sample": True}}), "loss")
        == {}
    )


def test_shipped_loss_section_is_valid() -> None:
    assert problems_by_key(REPO / "params.yaml", "loss") == {}


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("outputs", [1, 3])
def test_focal_gradients_stay_finite_at_saturated_logits(gamma: float, outputs: int) -> None:
    """(1 - p_t) ** gamma has an infinite slope where p_t -> 1 for gamma < 1; the loss is a finite 0
    there, and so must its gradient be."""
    loss = build_loss({"name": "focal", "params": {"gamma": gamma}}, task="segmentation", num_outputs=outputs)
    target = torch.tensor([[[0, 1], [1, 0]]])
    if outputs == 1:
        logits = torch.where(target == 1, 50.0, -50.0).float().unsqueeze(1)
    else:
        logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100 - 50
    logits.requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()


def test_weighted_losses_build_their_constants_once_per_device_and_dtype(monkeypatch):
    """Class weights, pos_weight and focal's alpha list: a tensor from a Python list every step is a
    blocking host-to-device copy on a GPU; they are built on first use and kept."""
    from pipeline.training.losses.cross_entropy import BCELoss, CrossEntropyLoss
    from pipeline.training.losses.focal import FocalLoss

    logits3, target3 = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    logits1, target1 = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 4, 4))
    cases = [
        (CrossEntropyLoss(weight=[1.0, 2.0, 3.0]), logits3, target3),
        (FocalLoss(alpha=[0.2, 0.3, 0.5]), logits3, target3),
        (BCELoss(pos_weight=2.0), logits1, target1),
    ]
    for loss, logits, target in cases:
        first = loss(logits, target)
        built = []
        monkeypatch.setattr(torch.Tensor, "new_tensor", lambda self, *a, **k: built.append(a) or torch.tensor(*a, **k))  # noqa: B023 (undone below)
        assert torch.equal(loss(logits, target), first) and built == []  # same value, nothing rebuilt
        monkeypatch.undo()
        assert list(loss.__dict__["_constants"]) == [
            (next(iter(loss.__dict__["_constants"]))[0], logits.device, logits.dtype)
        ]  # one per device and dtype
