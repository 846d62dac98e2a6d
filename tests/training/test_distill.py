"""Distillation (``train.distill``, :mod:`pipeline.training.distill`): the soft KL against a hand
computation and Hinton's soft-target cross-entropy, per pixel and per Bernoulli logit; alpha 0 is the
plain loss exactly; a teacher that does not fit the data is refused where validate points; and a tiny
training run with a teacher leaves the teacher untouched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from pipeline import outputs
from pipeline.config.params import Params, load_params
from pipeline.data.manifest import load_manifest
from pipeline.models import networks
from pipeline.models.file import ModelInfo, load_model, save_model
from pipeline.tracking.run import NullRun
from pipeline.training import distributed as dist
from pipeline.training import loop
from pipeline.training.distill import TEACHER_KEY, check_distill, distill_loss, soft_kl
from stages import train as train_stage
from tests.conftest import SHIPPED_PARAMS, make_workspace, problems_by_key, write_params


def test_soft_kl_is_the_hand_computed_kl_of_the_softened_distributions():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        for s, t in zip(s_row, t_row):
            p_t, p_s = math.exp(t / temperature) / zt, math.exp(s / temperature) / zs
            expected += p_t * math.log(p_t / p_s)
    expected /= 2  # batchmean
    kl = soft_kl(student, teacher, temperature, sigmoid=False)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    # torch's own form (timm's KD), and the T^2-scaled term the loss adds at alpha 1
    torch_kl = F.kl_div(
        F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1), reduction="batchmean"
    )
    torch.testing.assert_close(kl, torch_kl)
    whole = distill_loss(torch.tensor(7.0), student, teacher, alpha=1.0, temperature=temperature, sigmoid=False)
    torch.testing.assert_close(whole, temperature**2 * torch_kl)


def test_soft_kl_has_the_gradients_of_hintons_soft_target_cross_entropy():
    """KL = soft cross-entropy - the teacher's entropy (a constant): the same gradient for the student."""
    torch.manual_seed(0)
    teacher, temperature = torch.randn(4, 5), 3.0
    student = torch.randn(4, 5, requires_grad=True)
    soft_targets = F.softmax(teacher / temperature, 1)
    hinton = -(soft_targets * F.log_softmax(student / temperature, 1)).sum(1).mean()
    entropy = -(soft_targets * soft_targets.log()).sum(1).mean()
    kl = soft_kl(student, teacher, temperature, sigmoid=False)
    torch.testing.assert_close(kl, hinton - entropy)
    (grad_kl,) = torch.autograd.grad(kl, student)
    (grad_hinton,) = torch.autograd.grad(hinton, student)
    torch.testing.assert_close(grad_kl, grad_hinton)


def test_segmentation_kl_is_per_pixel_and_the_sigmoid_form_is_the_two_class_softmax():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)

    def pixels(logits: torch.Tensor) -> torch.Tensor:  # every pixel one row of class logits
        return logits.permute(0, 2, 3, 1).reshape(-1, 3)

    torch.testing.assert_close(
        soft_kl(student, teacher, 2.0, sigmoid=False), soft_kl(pixels(student), pixels(teacher), 2.0, sigmoid=False)
    )
    # one logit z is the Bernoulli sigmoid(z) = softmax([0, z])[1]: its KL is the two-class one, per logit
    s1, t1 = torch.randn(2, 1, 4, 5) * 3, torch.randn(2, 1, 4, 5) * 3

    def two(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], 1)

    torch.testing.assert_close(soft_kl(s1, t1, 4.0, sigmoid=True), soft_kl(two(s1), two(t1), 4.0, sigmoid=False))
    # multilabel: a Bernoulli per label, averaged over labels and samples; hand-computed for one logit pair
    p_t, p_s = 1 / (1 + math.exp(-2.0 / 2)), 1 / (1 + math.exp(1.0 / 2))
    hand = p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
    kl = soft_kl(torch.tensor([[-1.0, -1.0]]), torch.tensor([[2.0, 2.0]]), 2.0, sigmoid=True)
    assert kl.item() == pytest.approx(hand, rel=1e-6)


def test_alpha_zero_is_the_plain_loss_exactly_and_alpha_mixes_the_two():
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    task = torch.tensor(0.8123456789)
    assert torch.equal(distill_loss(task, student, teacher, alpha=0.0, temperature=4.0, sigmoid=False), task)
    mixed = distill_loss(task, student, teacher, alpha=0.25, temperature=4.0, sigmoid=False)
    torch.testing.assert_close(mixed, 0.75 * task + 0.25 * 16 * soft_kl(student, teacher, 4.0, sigmoid=False))


# --- the validate check ------------------------------------------------------------------------------


def _teacher(path: Path, *, task: str = "segmentation", classes: int = 2, size: int = 64, in_chans: int = 3) -> Path:
    """A tiny classic U-Net saved as this pipeline's model file (what train's best.safetensors is)."""
    model = {"source": "unet", "name": "classic", "in_chans": in_chans, "unet": {"base_channels": 2, "depth": 1}}
    model["unet"]["upsampling"] = "bilinear"
    config = networks.architecture(model, task=task, num_classes=classes, image_size=size)
    names = ["background", "foreground"] if classes == 2 else None
    save_model(path, networks.build_model(config), ModelInfo(config, ["head"], class_names=names))
    return path


def _params(tmp_path: Path, teacher: str | None, **data: object) -> Params:
    """The shipped params (64 px binary segmentation) with the teacher set, as a check sees them."""
    values = yaml.safe_load(SHIPPED_PARAMS.read_text())
    values["train"]["distill"]["teacher"] = teacher
    values["data"].update(data)
    return Params(values, tmp_path / "params.yaml")


def test_a_teacher_that_fits_passes_and_one_that_differs_is_refused_saying_how(tmp_path):
    _teacher(tmp_path / "fits.safetensors")
    assert check_distill(_params(tmp_path, "fits.safetensors")) == []
    assert check_distill(_params(tmp_path, None)) == []
    cases = {
        "classes": (_teacher(tmp_path / "three.safetensors", classes=3), "it has 3 classes, this run 2"),
        "size": (_teacher(tmp_path / "small.safetensors", size=32), "its image size is [32, 32], this run's [64, 64]"),
        "channels": (_teacher(tmp_path / "gray.safetensors", in_chans=1), "it takes 1 input channels, this run 3"),
    }
    for what, (path, why) in cases.items():
        [problem] = check_distill(_params(tmp_path, path.name))
        assert problem.key == TEACHER_KEY and why in problem.message and str(path) in problem.message, what
    # a segmentation teacher for a classification run: the task, and the class names it does not have
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "dog").mkdir()
    [problem] = check_distill(_params(tmp_path, "fits.safetensors", task="classification", root="data"))
    assert "its task is segmentation, this run's classification" in problem.message
    assert "its classes are ['background', 'foreground'], this run's ['cat', 'dog']" in problem.message


def test_a_missing_teacher_or_one_that_is_no_model_file_is_located(tmp_path):
    [missing] = check_distill(_params(tmp_path, "nowhere.safetensors"))
    assert missing.key == TEACHER_KEY and "no such model file" in missing.message
    (tmp_path / "notes.safetensors").write_text("not a model")
    [garbage] = check_distill(_params(tmp_path, "notes.safetensors"))
    assert garbage.key == TEACHER_KEY and "not a safetensors model file" in garbage.message
    # validate reports it at the key's line, as every problem
    params = write_params(tmp_path / "params.yaml", link=True, **{"train.distill": {"teacher": "nowhere.safetensors"}})
    found = problems_by_key(params, TEACHER_KEY)
    assert list(found) == [TEACHER_KEY] and "no such model file" in found[TEACHER_KEY]


# --- a training run with a teacher ---------------------------------------------------------------------


def test_training_with_a_teacher_runs_it_frozen_in_eval_mode_on_each_batch(tmp_path):
    """The model stage's own initial weights serve as the teacher (a model file of this run's shape):
    one epoch trains, the teacher saw every batch in eval mode without gradients, and its weights are
    the file's, bit for bit."""
    params = make_workspace(tmp_path, **{"train.epochs": 1})  # 20 images, 14 to train on
    teacher_file = tmp_path / "teacher.safetensors"
    teacher_file.write_bytes((tmp_path / outputs.MODEL_INIT).read_bytes())
    write_params(params, params, replace={"teacher: null": "teacher: teacher.safetensors"})
    view = load_params(params).view(train_stage.PARAMS)
    model, info = load_model(tmp_path / outputs.MODEL_INIT, trust_code=True)
    t = loop.build(view, load_manifest(tmp_path / outputs.MANIFEST), model, info, dist.SINGLE, torch.device("cpu"))
    assert t.step.distill is not None and t.step.distill.alpha == 0.5 and t.step.distill.temperature == 4.0
    teacher = t.step.distill.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    calls: list[tuple[bool, bool]] = []
    teacher.register_forward_hook(lambda m, _i, _o: calls.append((m.training, torch.is_grad_enabled())))
    history = loop.fit(t, NullRun(), root=tmp_path, fingerprint="test")
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert calls == [(False, False)] * len(t.data.loader)  # every batch, eval mode, no grad; validation never
    stored = load_file(str(teacher_file))
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, stored[name]), name
    assert all(p.grad is None for p in teacher.parameters())
