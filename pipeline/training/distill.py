"""Knowledge distillation (``train.distill``): a trained model file of this pipeline as the teacher.

Each training step the teacher, in eval mode and under ``torch.no_grad``, sees the same augmented batch
``x`` as the student, on the training device under the same autocast; the step's loss becomes

    (1 - alpha) * task_loss + alpha * T^2 * KL(teacher || student), both softened by the temperature T

(Hinton et al. 2015, as timm's ``--kd-model-name``: ``F.kl_div(log_softmax(s / T), softmax(t / T))``;
the KL differs from Hinton's soft-target cross-entropy by the teacher's entropy alone, a constant, so
the gradients are the same). The KL is taken per what the logits mean: a softmax over the classes
(classification: summed over classes, mean over the batch, ``batchmean``; segmentation: per pixel,
mean over pixels), or a Bernoulli per logit where each is a sigmoid (binary segmentation's one channel,
multilabel's labels: mean over pixels or labels). T^2 keeps the soft term's gradients on the scale of
the task loss's whatever T is.

The teacher must fit the student's data: its task, classes (number and names) and input (channels,
image size, normalisation) are checked by ``validate`` from the file's recipe alone
(:func:`check_distill`, no weights read), and again against the split manifest when train builds it.
Validation scores the student alone: the teacher touches the training loss only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.errors import PipelineError, Problem
from pipeline.training.precision import PrecisionPlan

KEY = "train.distill"
TEACHER_KEY = f"{KEY}.teacher"


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, sigmoid: bool) -> torch.Tensor:
    """KL(teacher || student) of the logits softened by ``temperature``, in float32 (not yet times T^2).

    ``sigmoid`` false: a softmax over dim 1 (the classes), the KL summed over it and averaged over every
    other position (the batch for [N, C] logits, the batch's pixels for [N, C, H, W]). True: each logit
    is a Bernoulli, KL(Bern(sigmoid(t / T)) || Bern(sigmoid(s / T))) averaged over every logit."""
    s, t = student.float() / temperature, teacher.float() / temperature
    if sigmoid:
        # log p and log(1 - p) as logsigmoid(z) and logsigmoid(-z): finite for any logit
        log_ps, log_qs = F.logsigmoid(s), F.logsigmoid(-s)
        log_pt, log_qt = F.logsigmoid(t), F.logsigmoid(-t)
        kl = log_pt.exp() * (log_pt - log_ps) + log_qt.exp() * (log_qt - log_qs)
        return kl.mean()
    log_s, log_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return per_position.mean()


def distill_loss(
    task_loss: torch.Tensor,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    sigmoid: bool,
) -> torch.Tensor:
    """``(1 - alpha) * task_loss + alpha * T^2 * KL``; alpha 0 is ``task_loss`` itself."""
    if alpha == 0:
        return task_loss
    kl = soft_kl(student, teacher, temperature, sigmoid=sigmoid)
    return (1 - alpha) * task_loss + alpha * temperature**2 * kl


def uses_sigmoid(task: str, num_outputs: int) -> bool:
    """Whether each logit is its own sigmoid (multilabel; binary segmentation's one channel)."""
    return task == "multilabel" or (task == "segmentation" and num_outputs == 1)


@dataclass
class Distiller:
    """The teacher and how its logits enter the loss; :class:`~pipeline.training.loop.TrainStep` calls
    it with the step's task loss, the student's logits and the batch."""

    teacher: nn.Module  # on the training device, in eval mode, no parameter requiring grad
    alpha: float
    temperature: float
    sigmoid: bool

    def __call__(
        self, task_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor, precision: PrecisionPlan
    ) -> torch.Tensor:
        if self.alpha == 0:
            return task_loss
        with torch.no_grad(), precision.autocast():
            target = self.teacher(x)
        return distill_loss(
            task_loss, logits, target, alpha=self.alpha, temperature=self.temperature, sigmoid=self.sigmoid
        )


def build_distiller(
    cfg: dict[str, Any], teacher_path: Path | None, student: Any, precision: PrecisionPlan
) -> Distiller | None:
    """The :class:`Distiller` of ``train.distill`` (None when its teacher is null): the teacher file
    loaded (:func:`~pipeline.models.file.load_model`, never unpickled), checked against the student's
    :class:`~pipeline.models.file.ModelInfo`, frozen and put on the training device."""
    if teacher_path is None:
        return None
    from pipeline.models.file import load_model

    try:
        teacher, info = load_model(teacher_path)
    except PipelineError as exc:
        raise PipelineError(f"{TEACHER_KEY}: {exc}") from None
    differences = mismatches(
        info,
        task=student.task,
        num_classes=int(student.config["num_classes"]),
        class_names=student.classes,
        in_chans=int(student.config["in_chans"]),
        image_hw=student.image_hw,
        mean=tuple(student.mean),
        std=tuple(student.std),
    )
    if differences:
        raise PipelineError(
            f"{TEACHER_KEY}: {teacher_path}: the teacher does not fit this run: {'; '.join(differences)}"
        )
    teacher.eval().requires_grad_(False)
    teacher.to(precision.device)
    if precision.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return Distiller(teacher, float(cfg["alpha"]), float(cfg["temperature"]), uses_sigmoid(info.task, info.num_outputs))


def mismatches(
    teacher: Any,
    *,
    task: str | None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    in_chans: int | None = None,
    image_hw: tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> list[str]:
    """How the teacher's :class:`~pipeline.models.file.ModelInfo` differs from the student's data and
    input (a None is not known here and not compared), one phrase each."""
    found = []
    if task is not None and teacher.task != task:
        found.append(f"its task is {teacher.task}, this run's {task}")
    teacher_classes = int(teacher.config["num_classes"])
    if num_classes is not None and teacher_classes != num_classes:
        found.append(f"it has {teacher_classes} classes, this run {num_classes}")
    elif class_names is not None and teacher.classes[: len(class_names)] != list(class_names):
        found.append(f"its classes are {teacher.classes}, this run's {list(class_names)}")
    if in_chans is not None and int(teacher.config["in_chans"]) != in_chans:
        found.append(f"it takes {teacher.config['in_chans']} input channels, this run {in_chans}")
    if image_hw is not None and teacher.image_hw != tuple(image_hw):
        found.append(f"its image size is {list(teacher.image_hw)}, this run's {list(image_hw)}")
    if mean is not None and std is not None and (tuple(teacher.mean), tuple(teacher.std)) != (mean, std):
        found.append(
            f"it normalises with mean {list(teacher.mean)} std {list(teacher.std)}, this run {list(mean)} {list(std)}"
        )
    return found


def check_distill(params: Any) -> list[Problem]:
    """``validate``: the teacher file exists, is a model file of this pipeline, and fits the data
    (task, classes, input), from its recipe alone (no weights read, so validate stays fast)."""
    teacher = params.get(TEACHER_KEY)
    if teacher is None:
        return []
    from pipeline.models.file import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, read_recipe
    from pipeline.models.recipe import check_recipe

    path = params.resolve_path(teacher)
    try:
        values = read_recipe(path)
        check_recipe(values, path)
    except PipelineError as exc:
        return [Problem(TEACHER_KEY, str(exc))]
    info = ModelInfo.from_recipe(values, [])
    task = params.get("data.task")
    names = data_class_names(params, task)
    classes = params.get("model.num_classes") or params.get("data.num_classes")
    if classes is None and names is not None and task != "segmentation":
        classes = len(names)
    size = params.get("data.image_size")
    differences = mismatches(
        info,
        task=task,
        num_classes=classes,
        class_names=names,
        in_chans=params.get("model.in_chans"),
        image_hw=(size, size) if isinstance(size, int) else tuple(size) if size is not None else None,
        mean=IMAGENET_MEAN,  # what every student file records (pipeline.models.input_contract)
        std=IMAGENET_STD,
    )
    if differences:
        return [Problem(TEACHER_KEY, f"{path}: the teacher does not fit this run: {'; '.join(differences)}")]
    return []


def data_class_names(params: Any, task: str) -> list[str] | None:
    """The data's class names as far as they are cheap to know (None otherwise): the class folders or
    labels file's names, segmentation's ``class_<i>`` for a declared class count."""
    if task == "segmentation":
        from pipeline.data.files import segmentation_class_names

        count = params.get("data.num_classes")
        return segmentation_class_names(count) if count else None
    if task == "multilabel":
        from pipeline.data.labels import read_multilabels

        root, labels = params.resolve_path(params.get("data.root")), params.get("data.labels")
        if not labels:
            return None
        try:
            return sorted({n for _, row in read_multilabels(root / labels, root, check_files=False) for n in row})
        except (PipelineError, OSError):
            return None
    from pipeline.training.sampling import declared_classes

    return declared_classes(params)
