"""Every independent error at once: a key the schema rejects hides no check that can judge without it
(a check whose context was rejected runs on stand-ins, :mod:`pipeline.config.checks`), and what only
the rejected key, or its stand-in, would cause is not reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import check_spec, checks
from pipeline.config.errors import ConfigError, Problem
from pipeline.config.params import Params, load_params
from tests.conftest import write_params

# (text in the shipped params.yaml, its replacement, the key reported, the value it is reported at,
#  words the message must hold). Each error is independent of the others.
ERRORS = [
    ("task: segmentation ", "task: segmentaton  ", "data.task", "segmentaton", "did you mean 'segmentation'"),
    ("fractions: {train: 0.7, val: 0.15,", "fractions: {train: 0.7, val: 0.25,", "split.fractions", "{train", "sum"),
    ("- Flipud: {p: 0.5}", "- Fliplrr: {p: 0.5}", "augment.train[1].Fliplrr", "{p: 0.5}", "did you mean 'Fliplr'"),
    ("name: classic ", "name: clasic  ", "model.name", "clasic", "did you mean 'classic'"),
    ("name: dice_bce ", "name: dcie     ", "loss.name", "dcie", "did you mean 'dice'"),
    ("name: AdamW ", "name: Adamw ", "optimizer.name", "Adamw", "did you mean 'AdamW'"),
    ("lr: 0.003 ", "lr: -0.03 ", "optimizer.lr", "-0.03", "minimum"),
    (
        "params: {}                    # its keyword",
        "params: {step_size: 1, gamma: 'abc'}  # its keyword",
        "scheduler.params.gamma",
        "'abc'",
        "StepLR",
    ),
    ("dtype: auto ", "dtype: fp33 ", "precision.dtype", "fp33", "did you mean 'fp32'"),
    ("epochs: 8", "epochs: -1", "train.epochs", "-1", "minimum of 1"),
    ("batch_size: 16", "batch_size: 0 ", "train.batch_size", "0", "minimum of 1"),
    ("threshold: 0.5 ", "threshold: 1.5 ", "evaluate.threshold", "1.5", "maximum"),
    ("opset: 20 ", "opset: 17 ", "export.opset", "17", "minimum of 18"),
]
NEEDED = {"name: CosineAnnealingLR ": "name: StepLR            "}  # the scheduler whose gamma is bad


def _problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    return caught.value.problems


def test_thirteen_independent_errors_are_all_reported_at_their_keys(tmp_path):
    edits = {old: new for old, new, *_ in ERRORS} | NEEDED
    path = write_params(tmp_path / "params.yaml", replace=edits, link=True)
    text = path.read_text()
    found = _problems(path)
    assert len(found) == len(ERRORS) == len({p.key for p in found}), [p.format("") for p in found]
    by_key = {p.key: p for p in found}
    for _old, new, key, value, words in ERRORS:
        problem = by_key[key]
        line = next(n for n, t in enumerate(text.splitlines(), 1) if new in t)
        column = text.splitlines()[line - 1].index(value, text.splitlines()[line - 1].index(": ")) + 1
        assert (problem.line, problem.column) == (line, column), problem.format("params.yaml")
        assert words in problem.message, problem.format("params.yaml")


def test_a_rejected_task_or_epoch_count_causes_no_problem_of_its_own(tmp_path):
    """The shipped file is valid for segmentation; under data.task's other value its U-Net, its
    dice_bce loss with 2 classes (multi-class there) and its masks would be wrong, and 5 warmup epochs
    would outlast a short run: none of that is reported, only the schema's two problems."""
    path = write_params(
        tmp_path / "params.yaml",
        link=True,
        replace={
            "task: segmentation ": "task: classificaton",
            "epochs: 8": "epochs: x",
            "warmup: {epochs: 1,": "warmup: {epochs: 5,",
        },
    )
    assert {p.key for p in _problems(path)} == {"data.task", "train.epochs"}


def test_stand_in_rules():
    """The mechanism alone, on a table of its own: a problem is kept when every stand-in gives it,
    once; one that a stand-in value causes, or that lies at or names the rejected key, is not; a
    rejected subject, or a rejected context key with no stand-in, still skips the check."""
    seen: list[Any] = []

    def by_task(params: Params) -> list[Problem]:
        seen.append(params.get("data.task"))
        out = [Problem("loss.name", "always"), Problem("loss.name", "always")]
        if params.get("data.task") == "classification":
            out.append(Problem("loss.name", "only for classification"))
        return out + [Problem("data.task", "at the rejected key"), Problem("loss.params", "data.task is odd")]

    def by_epochs(params: Params) -> list[Problem]:
        assert params.get("train.epochs") == 1000
        return [Problem("scheduler.params", "independent")]

    def without_stand_in(params: Params) -> list[Problem]:
        raise AssertionError("a rejected context key with no stand-in skips the check")

    def on_the_rejected_subject(params: Params) -> list[Problem]:
        raise AssertionError("a rejected subject skips the check")

    table = [  # a table of its own: the shipped checks are not run here
        check_spec.check(by_task, "loss", "data.task"),
        check_spec.check(by_epochs, "scheduler", "train.epochs", stand_ins={"train.epochs": (1000,)}),
        check_spec.check(without_stand_in, "optimizer", "train.epochs"),
        check_spec.check(on_the_rejected_subject, "data.task"),
    ]

    params = Params({"data": {"task": "segmentaton"}, "train": {"epochs": -1}, "loss": {}}, Path("params.yaml"))
    found = checks.run_checks(params, ["data.task", "train.epochs"], table=table)
    assert [(p.key, p.message) for p in found] == [("loss.name", "always"), ("scheduler.params", "independent")]
    assert sorted(seen) == ["classification", "multilabel", "segmentation"]  # every value data.task takes
    assert params.get("data.task") == "segmentaton"  # the stand-ins went to copies
    assert checks.run_checks(params, ["data.task", "train.epochs"], keys=["scheduler"], table=table) == [found[1]]


def test_stand_ins_name_context_keys():
    with pytest.raises(TypeError, match="context key"):
        check_spec.check(
            "pipeline.training.losses.section:check_loss", "loss", "data.task", stand_ins={"loss.name": ("dice",)}
        )
