"""Multi-label training pieces: the metrics against scikit-learn, the sigmoid losses on multi-hot
targets (bce and focal against torch's and torchvision's, asymmetric against the paper's formula),
the thresholds' checks and the val_map monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score
from torchvision.ops import sigmoid_focal_loss

from pipeline.config.errors import ComponentError, PipelineError
from pipeline.training.early_stopping import resolve_monitor
from pipeline.training.losses import build_loss
from pipeline.training.metrics import make_meter
from pipeline.training.multilabel_metrics import class_thresholds, multilabel_metrics

NAMES = ["a", "b", "c", "d"]


def _data(seed: int, n: int = 64, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, 4, generator=g) < torch.tensor([0.5, 0.3, 0.2, 0.6])).to(torch.uint8)
    probs = (0.6 * torch.rand(n, 4, generator=g) + 0.4 * targets).clamp(0, 1)
    return (probs.round(decimals=1) if ties else probs), targets  # rounded: many tied scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_metrics_equal_scikit_learn(seed, ties):
    probs, targets = _data(seed, ties=ties)
    thresholds = [0.5, 0.3, 0.6, 0.45]
    got = multilabel_metrics(probs, targets, thresholds, NAMES)
    y, p = targets.numpy(), probs.double().numpy()
    pred = (p > np.array(thresholds)).astype(int)
    assert got["map"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-12)
    for c, name in enumerate(NAMES):
        assert got[f"ap/{name}"] == pytest.approx(average_precision_score(y[:, c], p[:, c]), abs=1e-12)
    per_class = f1_score(y, pred, average=None, zero_division=0)
    assert [got[f"f1/{n}"] for n in NAMES] == pytest.approx(per_class, abs=1e-12)
    assert [got[f"precision/{n}"] for n in NAMES] == pytest.approx(
        precision_score(y, pred, average=None, zero_division=0), abs=1e-12
    )
    assert [got[f"recall/{n}"] for n in NAMES] == pytest.approx(
        recall_score(y, pred, average=None, zero_division=0), abs=1e-12
    )
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert got["exact_match"] == pytest.approx(float((pred == y).all(1).mean()), abs=1e-12)


def test_a_class_without_positives_is_left_out_of_map():
    probs, targets = _data(3)
    targets[:, 2] = 0
    got = multilabel_metrics(probs, targets, [0.5] * 4, NAMES)
    assert "ap/c" not in got
    kept = [0, 1, 3]
    expected = average_precision_score(targets.numpy()[:, kept], probs.double().numpy()[:, kept], average="macro")
    assert got["map"] == pytest.approx(expected, abs=1e-12)
    assert got["f1/c"] == 0.0  # predicted where absent: precision 0


def test_the_meter_over_batches_equals_one_pass_and_takes_a_per_class_mapping():
    probs, targets = _data(4)
    logits = torch.logit(probs.clamp(1e-4, 1 - 1e-4))
    meter = make_meter("multilabel", 4, threshold={"b": 0.3, "d": 0.7}, class_names=NAMES)
    for start in range(0, 64, 10):
        meter.update(logits[start : start + 10], targets[start : start + 10].float())
    whole = multilabel_metrics(torch.sigmoid(logits), targets, [0.5, 0.3, 0.5, 0.7], NAMES)
    assert meter.compute() == pytest.approx(whole)
    meter.reset()
    assert meter.compute()["map"] == 0.0


def test_threshold_names_are_checked_against_the_classes():
    with pytest.raises(PipelineError, match=r"evaluate\.threshold\.cirle: 'cirle' is not a class of the data.*circle"):
        class_thresholds({"cirle": 0.3}, "multilabel", ["circle", "square"])
    with pytest.raises(PipelineError, match="a per-class mapping is for multilabel data"):
        class_thresholds({"car": 0.3}, "segmentation", ["background", "car"])
    assert class_thresholds(0.4, "multilabel", ["circle"]) == 0.4


def test_the_monitor_for_multilabel_is_val_map():
    assert resolve_monitor("multilabel", "auto", "auto") == ("val_map", "max")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) < 0.3).float()


def test_bce_and_focal_take_multi_hot_targets():
    logits, target = _batch()
    bce = build_loss({"name": "bce", "params": {"pos_weight": [1, 2, 3, 4, 5]}}, task="multilabel", num_outputs=5)
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor([1.0, 2, 3, 4, 5]))
    assert bce(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    focal = build_loss({"name": "focal", "params": {"alpha": 0.25}}, task="multilabel", num_outputs=5)
    reference = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="mean")
    assert focal(logits, target).item() == pytest.approx(reference.item(), rel=1e-6)


def _asl_reference(x, y, gamma_neg, gamma_pos, clip):
    """The paper's code (Alibaba-MIIL/ASL, AsymmetricLoss.forward), summed there, averaged here."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=1e-8))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=1e-8))
    loss = los_pos + los_neg
    pt = xs_pos * y + xs_neg * (1 - y)
    gamma = gamma_pos * y + gamma_neg * (1 - y)
    loss = loss * torch.pow(1 - pt, gamma)
    return -loss.sum() / x.numel()


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), [(4, 0, 0.05), (2, 1, 0.0), (0, 0, 0.0), (3, 0.5, 0.2)])
def test_asymmetric_equals_the_papers_code(gamma_neg, gamma_pos, clip):
    logits, target = _batch(1)
    loss = build_loss(
        {"name": "asymmetric", "params": {"gamma_neg": gamma_neg, "gamma_pos": gamma_pos, "clip": clip}},
        task="multilabel",
        num_outputs=5,
    )
    expected = _asl_reference(logits.double(), target.double(), gamma_neg, gamma_pos, clip)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    if gamma_neg == gamma_pos == clip == 0:  # no focusing, no margin: plain BCE
        assert loss(logits, target).item() == pytest.approx(
            F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6
        )


def test_asymmetric_is_finite_on_confident_logits():
    logits = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)
    loss = build_loss({"name": "asymmetric", "params": {}}, task="multilabel", num_outputs=3)
    value = loss(logits, torch.tensor([[0.0, 1.0, 1.0]]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["dice", "cross_entropy", "dice_bce"])
def test_softmax_and_overlap_losses_are_refused_for_multilabel(name):
    with pytest.raises(ComponentError, match=r"does not take multilabel targets.*bce, focal or asymmetric"):
        build_loss({"name": name, "params": {}}, task="multilabel", num_outputs=3)
