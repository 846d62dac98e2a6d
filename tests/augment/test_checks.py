"""Checking augment specs as `validate` does: each name and argument problem at its own dotted key and
line, every shipped config's augmenters build, mask-unsafe augmenters are refused for segmentation, and
the check leaves the global random state alone."""

from __future__ import annotations

from pathlib import Path

import imgaug.random as iarandom
import numpy as np
import pytest
import yaml

from pipeline.augment.augmenters import SEGMENTATION_UNSAFE, build_augmenter
from pipeline.augment.checks import augment_problems
from pipeline.config.errors import ConfigError
from pipeline.config.params import load_params
from tests.augment.test_transform import GEOMETRIC
from tests.conftest import REPO, write_params


def problems_of(spec, task="segmentation", key="augment.train"):
    return {p.key: p.message for p in augment_problems(spec, task=task, key=key, image_size=[32, 32])}


def test_each_argument_problem_is_reported_at_its_own_dotted_key():
    spec = yaml.safe_load("""
    - Fliplr: {p: 3}
    - Affine: {rotat: [-20, 20]}
    - Flipx
    - Sometimes: {p: 0.3, then_list: [{GaussianBlur: {sigma: [-1.0, 1.0]}}]}
    - GaussianBlur: {sigma: [0, 1], bogus: 1}
    - Affine: {rotate: 10, mode: reflec}
    - OneOf: [Fliplr]
    """)
    found = problems_of(spec)
    assert set(found) == {
        "augment.train[0].Fliplr.p",
        "augment.train[1].Affine.rotat",
        "augment.train[2]",
        "augment.train[3].Sometimes.then_list[0].GaussianBlur.sigma",
        "augment.train[4].GaussianBlur.bogus",
        "augment.train[5].Affine",
        "augment.train[6]",
    }
    assert "interval [0.0, 1.0]" in found["augment.train[0].Fliplr.p"]
    assert "did you mean 'rotate'?" in found["augment.train[1].Affine.rotat"]
    assert "did you mean 'Flipud'?" in found["augment.train[2]"] or "'Fliplr'" in found["augment.train[2]"]
    assert "fails on a test image" in found["augment.train[5].Affine"]  # only noticed when run
    assert "children" in found["augment.train[6]"]


def test_validate_reports_bad_name_and_bad_argument_at_their_lines(tmp_path):
    params = write_params(
        tmp_path / "params.yaml",
        replace={
            "    - Fliplr: {p: 0.5}\n": "    - Flipr: {p: 0.5}\n",
            "    - Affine: {rotate:": "    - Affine: {rotat:",
        },
    )
    lines = params.read_text().splitlines()
    name_line = next(i for i, line in enumerate(lines, 1) if "- Flipr:" in line)
    arg_line = next(i for i, line in enumerate(lines, 1) if "{rotat:" in line)
    with pytest.raises(ConfigError) as caught:
        load_params(params)
    located = {p.key: p.line for p in caught.value.problems if p.key.startswith("augment")}
    assert located == {"augment.train[0].Flipr": name_line, "augment.train[2].Affine.rotat": arg_line}
    assert f"params.yaml:{arg_line}:" in str(caught.value) and "did you mean 'rotate'?" in str(caught.value)


def shipped_configs() -> list[Path]:
    return [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_augmenter_in_a_shipped_config_builds(path):
    raw = yaml.safe_load(path.read_text())
    task = raw.get("data", {}).get("task", "segmentation")
    section = raw.get("augment", {})
    for name in ("train", "eval"):
        spec = section.get(name, [])
        assert problems_of(spec, task=task, key=f"augment.{name}") == {}
        seq = build_augmenter(spec, task=task)
        assert len(seq) == len(spec)


# --- segmentation safety -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEGMENTATION_UNSAFE))
def test_mask_unsafe_augmenters_are_refused_for_segmentation_only(name):
    nested = [{"Sometimes": {"p": 0.5, "then_list": [name]}}]
    assert "cannot handle segmentation masks" in problems_of(nested)["augment.train[0].Sometimes.then_list[0]"]
    assert problems_of(nested, task="classification") == {}


def test_geometric_child_of_a_channel_subset_wrapper_is_refused_for_segmentation():
    spec = [{"WithChannels": {"channels": [0], "children": [{"Affine": {"rotate": 10}}]}}]
    assert "mask cannot follow" in problems_of(spec)["augment.train[0].WithChannels"]
    assert problems_of([{"WithChannels": {"channels": [0], "children": ["Invert"]}}]) == {}


def test_check_leaves_global_random_state_untouched():
    np.random.seed(5)
    iarandom.seed(5)
    expected = (np.random.rand(), iarandom.get_global_rng().integers(0, 10**9))
    np.random.seed(5)
    iarandom.seed(5)
    assert problems_of(GEOMETRIC[:3]) == {}
    assert (np.random.rand(), iarandom.get_global_rng().integers(0, 10**9)) == expected
