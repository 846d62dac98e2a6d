"""train.sampler: a balanced draw on a 1:20 imbalanced set draws each class about equally every epoch,
is a function of (train.seed, epoch) alone (so a resumed run draws exactly what the uninterrupted run
drew), shares one draw among DDP ranks without overlap, and is checked by validate."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.config.errors import PipelineError
from pipeline.training import distributed as dist
from pipeline.training import loop
from pipeline.training.sampling import WeightedDraw, train_sampler
from stages import train as train_stage
from tests.conftest import make_workspace, problems_by_key, write_params


def imbalanced_manifest(rare: int = 50, common: int = 1000) -> SimpleNamespace:
    """A two-class training split, ``rare`` : ``common`` (1:20 by default), the classes interleaved."""
    labels = [0] * rare + [1] * common
    random.Random(0).shuffle(labels)
    return SimpleNamespace(
        task="classification",
        class_names=["rare", "common"],
        splits={"train": [{"image": f"{i}.png", "label": label} for i, label in enumerate(labels)]},
        counts={"train": {"rare": rare, "common": common}},
    )


def drawn_classes(sampler: WeightedDraw, manifest: SimpleNamespace) -> Counter[int]:
    return Counter(manifest.splits["train"][i]["label"] for i in sampler)


def test_balanced_draws_each_class_within_ten_percent_of_equal_every_epoch():
    manifest = imbalanced_manifest()
    n = len(manifest.splits["train"])
    sampler = train_sampler("balanced", manifest, n, dist.SINGLE, seed=0)
    assert sampler is not None and len(sampler) == n
    for epoch in range(10):
        sampler.set_epoch(epoch)
        drawn = drawn_classes(sampler, manifest)
        assert sum(drawn.values()) == n
        assert all(abs(drawn[c] - n / 2) <= 0.1 * n / 2 for c in (0, 1)), (epoch, drawn)
    # uniform is no draw at all: every sample once (the loader shuffles), 50 of 1050 rare
    assert train_sampler("uniform", manifest, n, dist.SINGLE, seed=0) is None


def test_class_weights_by_name_set_the_draws_proportions():
    manifest = imbalanced_manifest()
    n = len(manifest.splits["train"])
    # rare x 20 per sample: 50 * 20 = 1000 against 1000 -> equal; then rare x 60 -> 3 : 1
    even = train_sampler({"weights": {"rare": 20}}, manifest, n, dist.SINGLE, seed=1)
    tilted = train_sampler({"weights": {"rare": 60, "common": 1}}, manifest, n, dist.SINGLE, seed=1)
    assert even is not None and tilted is not None
    assert abs(drawn_classes(even, manifest)[0] - n / 2) <= 0.1 * n / 2
    assert abs(drawn_classes(tilted, manifest)[0] - 0.75 * n) <= 0.1 * 0.75 * n
    with pytest.raises(PipelineError, match=r"train\.sampler\.weights: no class 'rar'.*did you mean 'rare'"):
        train_sampler({"weights": {"rar": 2}}, manifest, n, dist.SINGLE, seed=1)
    with pytest.raises(PipelineError, match="every training sample weighs 0"):
        train_sampler({"weights": {"rare": 0, "common": 0}}, manifest, n, dist.SINGLE, seed=1)


def test_the_draw_depends_on_seed_and_epoch_only():
    weights = [1.0] * 30 + [20.0] * 3
    resumed = WeightedDraw(weights, seed=7)
    resumed.set_epoch(3)
    running = WeightedDraw(weights, seed=7)
    epochs = []
    for epoch in range(4):
        running.set_epoch(epoch)
        epochs.append(list(running))
    assert list(resumed) == epochs[3]
    assert len({tuple(e) for e in epochs}) == 4  # a new draw every epoch
    other = WeightedDraw(weights, seed=8)
    other.set_epoch(3)
    assert list(other) != epochs[3]


def test_ddp_ranks_take_disjoint_shares_of_one_draw():
    weights = [1.0] * 40 + [10.0] * 11  # 51 samples: 1 left over by 2 ranks
    whole = WeightedDraw(weights, seed=2)
    ranks = [WeightedDraw(weights, seed=2, ctx=dist.Context(rank=r, world_size=2)) for r in (0, 1)]
    for epoch in (0, 5):
        for sampler in (whole, *ranks):
            sampler.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert [len(s) for s in shares] == [25, 25] == [len(s) for s in ranks]
        interleaved = [i for pair in zip(*shares) for i in pair]
        assert interleaved == list(whole)[:50]  # positions of one draw, none taken twice


def test_validate_refuses_balanced_segmentation_and_unknown_class_names(tmp_path: Path):
    seg = write_params(tmp_path / "seg.yaml", **{"train.sampler": "balanced"})
    assert "several classes" in problems_by_key(seg, "train.sampler")["train.sampler"]

    from pipeline.data.synthetic import generate_classification

    generate_classification(tmp_path / "data", n_per_class=1, size=16, seed=0)
    base = {"data.task": "classification", "data.root": "data", "data.num_classes": None, "model.source": "timm"}
    base |= {"model.name": "test_resnet", "model.pretrained": False, "loss.name": "cross_entropy"}
    typo = write_params(tmp_path / "typo.yaml", **base, **{"train.sampler": {"weights": {"circel": 2}}})
    assert problems_by_key(typo, "train.sampler") == {
        "train.sampler.weights": "no class 'circel' (did you mean 'circle'?); the classes are circle, square, triangle"
    }
    good = write_params(tmp_path / "good.yaml", **base, **{"train.sampler": {"weights": {"circle": 2}}})
    assert problems_by_key(good, "train.sampler") == {}
    balanced = write_params(tmp_path / "bal.yaml", **base, **{"train.sampler": "balanced"})
    assert problems_by_key(balanced, "train.sampler") == {}
    wrong = write_params(tmp_path / "wrong.yaml", **base, **{"train.sampler": "weighted"})
    assert set(problems_by_key(wrong, "train.sampler")) == {"train.sampler"}


class Interrupted(Exception):
    """Stands in for the kill: raised in epoch 2's validation, after epoch 1's checkpoint."""


@pytest.mark.slow
def test_balanced_training_on_a_1_to_20_set_draws_the_same_after_a_resume(tmp_path: Path, monkeypatch):
    """The train stage with train.sampler: balanced on a 1:20 two-class set: the split reports the
    imbalance, the rare class is drawn about as often as the common one, and a run interrupted after
    its first epoch and resumed from the checkpoint trains on exactly the draws of the uninterrupted run."""
    from pipeline.data.synthetic import generate_classification

    data = tmp_path / "data"
    generate_classification(data, n_per_class=60, size=32, seed=3)
    shutil.rmtree(data / "triangle")
    for extra in sorted((data / "circle").iterdir())[3:]:
        extra.unlink()  # 3 circles : 60 squares

    overrides = {"train.sampler": "balanced", "train.epochs": 3, "train.deterministic": True}

    tries: dict[str, dict[int, int]] = {}

    def run(name: str, interrupt: bool = False) -> tuple[Path, dict[int, list[int]]]:
        root = tmp_path / name
        params = make_workspace(root, task="classification", dataset=data, **overrides)
        monkeypatch.setenv(dist.DEBUG_SAMPLES_ENV, str(root / "samples"))
        if interrupt:
            calls = []
            real = loop.validate

            def validate_then_die(t):
                calls.append(1)
                if len(calls) == 2:
                    raise Interrupted
                return real(t)

            monkeypatch.setattr(loop, "validate", validate_then_die)
            with pytest.raises(Interrupted):
                train_stage.main(["--params", str(params)])
            monkeypatch.setattr(loop, "validate", real)
        assert train_stage.main(["--params", str(params)]) == 0
        lines = (root / "samples/rank0.txt").read_text().splitlines()
        draws: dict[int, list[list[int]]] = {}
        for line in lines:
            epoch, *indices = map(int, line.split())
            draws.setdefault(epoch, []).append(indices)
        tries[name] = {epoch: len(seen) for epoch, seen in draws.items()}
        for epoch, seen in draws.items():
            assert all(s == seen[0] for s in seen), f"epoch {epoch} drew differently on its second try"
        return params, {epoch: seen[0] for epoch, seen in draws.items()}

    whole, whole_draws = run("whole")
    cut, cut_draws = run("cut", interrupt=True)
    assert sorted(whole_draws) == sorted(cut_draws) == [0, 1, 2]
    assert tries["cut"] == {0: 1, 1: 2, 2: 1}, "the second try resumed after epoch 1, not from scratch"
    assert cut_draws == whole_draws
    a, b = (
        torch.load(p.parent / "outputs/train/checkpoint/last.pt", weights_only=False)["model"] for p in (whole, cut)
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"

    manifest = json.loads((whole.parent / "outputs/split/manifest.json").read_text())
    counts = manifest["counts"]["train"]
    assert counts["square"] / counts["circle"] >= 15
    assert manifest["summary"]["imbalance"] == {
        "ratio": round(counts["square"] / counts["circle"], 2),
        "largest": "square",
        "smallest": "circle",
    }
    summary = json.loads((whole.parent / "outputs/train/summary.json").read_text())
    assert summary["imbalance"] == manifest["summary"]["imbalance"] and summary["sampler"] == "balanced"
    labels = [e["label"] for e in manifest["splits"]["train"]]
    for indices in whole_draws.values():
        rare = sum(labels[i] == 0 for i in indices)
        assert 0.3 <= rare / len(indices) <= 0.7, rare  # uniform would draw the rare class 5% of the time
