"""Metrics against hand-computed numbers: binary and multi-class segmentation (pooled), empty masks,
classification precision/recall/F1 with undefined classes, thresholds, ignored pixels."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.training.metrics import (
    classification_metrics,
    confusion_counts,
    make_meter,
    predict,
    segmentation_metrics,
    split_per_class,
)


def binary_logits(pred: list[list[int]]) -> torch.Tensor:
    """[1,1,H,W] logits that predict exactly ``pred`` (+4 foreground, -4 background)."""
    return (torch.tensor(pred, dtype=torch.float32) * 8 - 4)[None, None]


def onehot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax over dim 1 is ``pred`` ([N] -> [N,C]; [N,H,W] -> [N,C,H,W])."""
    logits = torch.nn.functional.one_hot(pred, num_classes).float() * 5
    return logits if pred.dim() == 1 else logits.permute(0, 3, 1, 2)


def test_binary_segmentation_by_hand():
    target = torch.tensor([[[1, 1, 0], [0, 0, 1]]])
    # tp 2 ((0,0), (1,2)), fn 1 ((0,1)), fp 1 ((1,0)), tn 2
    meter = make_meter("segmentation", 2, class_names=["background", "shape"])
    meter.update(binary_logits([[1, 0, 0], [1, 0, 1]]), target)
    m = meter.compute()
    assert m["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["dice/shape"] == pytest.approx(2 / 3)
    # background: tp 2, fp 1 (the fn pixel), fn 1
    assert m["dice/background"] == pytest.approx(4 / 6)
    assert m["iou/background"] == pytest.approx(2 / 4)
    assert meter.confusion_matrix() == [[2, 1], [1, 2]]


def test_segmentation_is_pooled_over_images_not_averaged_per_image():
    meter = make_meter("segmentation", 2)
    # image 1: 4 foreground pixels, all found (per-image dice 1); image 2: 1 pixel, missed (dice 0)
    meter.update(binary_logits([[1, 1], [1, 1]]), torch.ones(1, 2, 2, dtype=torch.long))
    meter.update(binary_logits([[0, 0], [0, 0]]), torch.tensor([[[0, 1], [0, 0]]]))
    m = meter.compute()
    assert m["dice"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 1))  # 8/9, not (1 + 0) / 2
    assert m["iou"] == pytest.approx(4 / 5)
    assert m["pixel_accuracy"] == pytest.approx(7 / 8)


def test_empty_target_and_empty_prediction_is_perfect_not_nan():
    meter = make_meter("segmentation", 2)
    meter.update(binary_logits([[0, 0], [0, 0]]), torch.zeros(1, 2, 2, dtype=torch.long))
    m = meter.compute()
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["pixel_accuracy"] == 1.0
    assert all(math.isfinite(v) for v in m.values())
    # an empty target with a false positive is a miss, not perfect
    meter.update(binary_logits([[1, 0], [0, 0]]), torch.zeros(1, 2, 2, dtype=torch.long))
    assert meter.compute()["dice"] == 0.0


def test_binary_threshold_applies_to_sigmoid_probability():
    logits = torch.full((1, 1, 1, 2), 0.3)  # sigmoid(0.3) = 0.574
    assert predict(logits, 0.5).tolist() == [[[1, 1]]]
    assert predict(logits, 0.6).tolist() == [[[0, 0]]]
    meter = make_meter("segmentation", 2, threshold=0.6)
    meter.update(logits, torch.ones(1, 1, 2, dtype=torch.long))
    assert meter.compute()["dice"] == 0.0


def test_multiclass_segmentation_mean_over_foreground_classes_present():
    target = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 2], [2, 0, 0]]])
    meter = make_meter("segmentation", 4, class_names=["bg", "a", "b", "c"])
    meter.update(onehot_logits(pred, 4), target)
    m = meter.compute()
    # class a: tp 1, fn 1, fp 0 -> dice 2/3, iou 1/2; class b: tp 1, fp 1, fn 1 -> dice 1/2, iou 1/3
    # class c: absent from target and prediction -> left out of the mean, reported as 1.0
    assert m["dice/a"] == pytest.approx(2 / 3)
    assert m["dice/b"] == pytest.approx(1 / 2)
    assert m["dice/c"] == 1.0
    assert m["dice"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["iou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    # background: tp 2, fp 1, fn 0
    assert m["dice/bg"] == pytest.approx(4 / 5)
    assert meter.confusion_matrix() == [[2, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_multiclass_all_background_is_perfect():
    meter = make_meter("segmentation", 3)
    meter.update(onehot_logits(torch.zeros(2, 3, 3, dtype=torch.long), 3), torch.zeros(2, 3, 3, dtype=torch.long))
    m = meter.compute()
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_out_of_range_target_pixels_are_ignored():
    target = torch.tensor([[[1, 255], [0, 255]]])
    meter = make_meter("segmentation", 2)
    meter.update(binary_logits([[1, 1], [0, 1]]), target)
    assert meter.confusion_matrix() == [[1, 0], [0, 1]]
    assert meter.compute()["dice"] == 1.0


def test_classification_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    meter = make_meter("classification", 3, class_names=["circle", "square", "triangle"])
    meter.update(onehot_logits(pred[:4], 3), target[:4])  # two batches accumulate
    meter.update(onehot_logits(pred[4:], 3), target[4:])
    m = meter.compute()
    assert meter.confusion_matrix() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["precision/circle"], m["recall/circle"], m["f1/circle"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (m["precision/square"], m["recall/square"], m["f1/square"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (m["precision/triangle"], m["recall/triangle"]) == pytest.approx((1.0, 1 / 2))
    assert m["f1/triangle"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_per_class_scores_split_from_the_headline_by_class_in_class_order():
    """What `dvc exp show` lists (headline) apart from what goes to the per-class plot; a class name
    may itself hold a slash (only the first one separates)."""
    scores = classification_metrics(torch.tensor([[2, 0], [1, 1]]), ["b/x", "a"])
    headline, per_class = split_per_class(scores)
    assert headline == {"accuracy": pytest.approx(3 / 4), "macro_f1": scores["macro_f1"]}
    assert list(per_class) == ["b/x", "a"]  # the meter's class order, not sorted
    assert per_class["b/x"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8)}
    assert per_class["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}


def test_classification_undefined_scores_are_zero_and_absent_classes_leave_macro():
    # class 1 is never predicted (precision undefined -> 0); class 3 never occurs at all
    cm = torch.tensor([[2, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    m = classification_metrics(cm)
    assert m["precision/1"] == 0.0 and m["recall/1"] == 0.0 and m["f1/1"] == 0.0
    assert m["f1/3"] == 0.0
    f1_0 = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert m["macro_f1"] == pytest.approx((f1_0 + 0.0 + 1.0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert all(math.isfinite(v) for v in m.values())


def test_binary_classification_with_one_logit():
    meter = make_meter("classification", 2, threshold=0.5)
    meter.update(torch.tensor([[2.0], [-1.0], [0.5], [-3.0]]), torch.tensor([1, 1, 0, 0]))
    assert meter.confusion_matrix() == [[1, 1], [1, 1]]
    assert meter.compute()["accuracy"] == 0.5


def test_reset_and_empty_meter():
    meter = make_meter("classification", 2)
    assert meter.confusion_matrix() == [[0, 0], [0, 0]]
    meter.update(onehot_logits(torch.tensor([1]), 2), torch.tensor([1]))
    assert meter.compute()["accuracy"] == 1.0
    meter.reset()
    assert meter.confusion_matrix() == [[0, 0], [0, 0]]


def test_bf16_logits_are_accepted():
    logits = binary_logits([[1, 0]]).to(torch.bfloat16)
    meter = make_meter("segmentation", 2)
    meter.update(logits, torch.tensor([[[1, 0]]]))
    assert meter.compute()["dice"] == 1.0


@pytest.mark.parametrize("logits_shape, num_classes", [((1, 3, 2, 2), 2), ((1, 1, 2, 2), 3)])
def test_channel_mismatch_is_refused(logits_shape, num_classes):
    meter = make_meter("segmentation", num_classes)
    with pytest.raises(ValueError, match="channels"):
        meter.update(torch.zeros(logits_shape), torch.zeros(1, 2, 2, dtype=torch.long))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="task"):
        make_meter("detection", 2)
    with pytest.raises(ValueError, match="class names"):
        make_meter("classification", 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="threshold"):
        make_meter("segmentation", 2, threshold=1.0)


def test_confusion_counts_match_bincount():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 19), generator=gen)
    pred = torch.randint(0, 5, (3, 17, 19), generator=gen)
    expected = torch.bincount((target * 5 + pred).flatten(), minlength=25).view(5, 5)
    assert torch.equal(confusion_counts(target, pred, 5), expected)
    assert segmentation_metrics(expected)["pixel_accuracy"] == pytest.approx(
        expected.trace().item() / expected.sum().item()
    )
