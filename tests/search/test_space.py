"""The search space in params.yaml: every dimension names a key, every value a trial may get passes
the key's own checks before any trial runs, located in the search: section."""

from __future__ import annotations

import pytest
import yaml

from pipeline.search.runner import _scalar
from tests.conftest import REPO, problems_by_key, write_params


def _space(tmp_path, space: dict, **overrides):
    return write_params(tmp_path / "params.yaml", link=True, **{"search.space": space, **overrides})


def test_every_value_a_trial_may_get_is_checked_where_it_is_declared(tmp_path):
    path = _space(
        tmp_path,
        {
            "loss.name": {"type": "categorical", "choices": ["dice_bce", "dcie"]},
            "optimizer.lrr": {"type": "float", "low": 0.001, "high": 0.1},
            "train.batch_size": {"type": "int", "low": 0, "high": 32, "step": 8},
            "optimizer.params.momentum": {"type": "float", "low": 0, "high": 0.9, "log": True},
            "optimizer.params.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        },
    )
    problems = problems_by_key(path)
    assert problems["search.space.loss.name.choices[1]"].startswith("loss.name = 'dcie': unknown loss")
    assert "did you mean 'dice'" in problems["search.space.loss.name.choices[1]"]
    assert "optimizer has no 'lrr' (did you mean 'lr'?)" in problems["search.space.optimizer.lrr"]
    assert "train.batch_size = 0: 0 is less than the minimum of 1" in problems["search.space.train.batch_size.low"]
    assert "a log scale needs low above 0" in problems["search.space.optimizer.params.momentum.low"]
    assert sorted(problems) == [
        "search.space.loss.name.choices[1]",
        "search.space.optimizer.lrr",
        "search.space.optimizer.params.momentum.low",
        "search.space.train.batch_size.low",
    ]


def test_the_problems_carry_the_line_of_their_dimension(tmp_path):
    from pipeline.config.errors import ConfigError
    from pipeline.config.params import load_params

    path = _space(tmp_path, {"loss.name": {"type": "categorical", "choices": ["dice_bce", "dice", "focall"]}})
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "focall" in text)
    with pytest.raises(ConfigError) as refused:
        load_params(path)
    assert [(p.key, p.line) for p in refused.value.problems] == [("search.space.loss.name.choices[2]", line)]


def test_a_choice_that_does_not_fit_the_files_own_settings_is_named(tmp_path):
    """loss.params set for focal: a trial that picks dice_bce would fail on them, so validate says so."""
    path = _space(
        tmp_path,
        {"loss.name": {"type": "categorical", "choices": ["focal", "dice_bce"]}},
        loss={"name": "focal", "params": {"gamma": 1.0}, "terms": []},
    )
    problems = problems_by_key(path)
    assert list(problems) == ["search.space.loss.name.choices[1]"]
    assert "loss.name = 'dice_bce'" in problems["search.space.loss.name.choices[1]"]


def test_grid_needs_countable_dimensions(tmp_path):
    path = _space(
        tmp_path,
        {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01}},
        **{"search.sampler": {"name": "grid", "seed": 0}},
    )
    assert problems_by_key(path) == {"search.space.optimizer.lr": "the grid sampler needs a step for a float range"}


def test_only_validate_reads_the_search_section():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert [name for name, stage in stages.items() if "search" in stage.get("params", [])] == ["validate"]


def test_a_value_reaches_dvc_as_yaml_reads_it_back():
    for value in (1e-05, 0.003, 8, "dice", "1e-3", True, None, 2.5e-10):
        assert yaml.safe_load(_scalar(value)) == value, (value, _scalar(value))
