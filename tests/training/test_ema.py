"""train.ema (:mod:`pipeline.training.ema`): the average equals timm's ``ModelEmaV3`` on the same steps,
its warmup is timm's, ``every`` updates every N optimizer steps, the update reads nothing back from the
device, the loop validates the model and its average side by side (``val_*`` and ``val_ema_*``) and keeps
the better as the best weights, saying which, and a resumed run ends with the uninterrupted run's average."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from pipeline import outputs
from pipeline.config.params import load_params
from pipeline.data.manifest import load_manifest
from pipeline.models.file import load_model
from pipeline.tracking.run import NullRun
from pipeline.training import distributed as dist
from pipeline.training import loop
from pipeline.training.ema import ModelEma, check_ema_monitor, ema_decay, kept_weights
from stages import train as train_stage
from tests.conftest import TRAIN, make_workspace, problems_by_key, train_history, write_params

CPU = torch.device("cpu")


def _net() -> nn.Module:
    """Parameters, float buffers (BatchNorm's running statistics) and an integer one (num_batches_tracked)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


@contextmanager
def _no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reading a tensor's value on the host (a device sync on a GPU) fails inside."""

    def host_read(*_: object) -> None:
        raise AssertionError("the EMA update read a tensor back to the host")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, host_read)
        yield


@pytest.mark.parametrize(
    ("decay", "warmup", "every"), [(0.9, True, 1), (0.5, True, 1), (0.8, False, 1), (0.9, True, 3)]
)
def test_equals_timm_model_ema_v3_on_the_same_steps(monkeypatch, decay, warmup, every):
    """The same model, the same AdamW steps in train mode (BatchNorm's statistics move too): after every
    step, our average and timm's, updated at the same steps with timm's step count, agree to float rounding.
    decay 0.5 is below the warmup's decay from step 3 on, so its min() bites."""
    model = _net()
    ours = ModelEma(model, decay=decay, warmup=warmup, every=every)
    theirs = ModelEmaV3(model, decay=decay, use_warmup=warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 13):
        x = torch.randn(8, 3, 8, 8, generator=generator)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 2, (8,), generator=generator))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with _no_host_reads(monkeypatch):
            ours.step(model)
        if step % every == 0:
            theirs.update(model, step=step)
        mine, timm_state = ours.module.state_dict(), theirs.module.state_dict()
        assert mine.keys() == timm_state.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], timm_state[key], rtol=1e-6, atol=1e-7, msg=f"{key} at step {step}")
    assert ours.steps == 12
    assert int(ours.module[1].num_batches_tracked) == 12  # the integer buffer is copied, not averaged
    trained = model.state_dict()
    assert not torch.allclose(mine["4.weight"], trained["4.weight"])  # an average, not the last weights


def test_the_warmup_is_timms():
    """After optimizer step n: 0 at the first (the average starts as a copy), then min(decay, 1 - n^-2/3)."""
    assert ema_decay(1, 0.9998, warmup=True) == 0.0 and ema_decay(1, 0.9998, warmup=False) == 0.0
    assert ema_decay(8, 0.9998, warmup=True) == pytest.approx(0.75, abs=1e-12)  # 8^-2/3 = 1/4
    assert ema_decay(27, 0.9998, warmup=True) == pytest.approx(1 - 1 / 9, abs=1e-12)
    assert ema_decay(1000, 0.9998, warmup=True) == pytest.approx(0.99, abs=1e-12)
    assert ema_decay(10**6, 0.9998, warmup=True) == 0.9998  # 0.9999 capped by decay
    assert ema_decay(2, 0.9998, warmup=False) == 0.9998
    for warmup in (True, False):
        timm = ModelEmaV3(nn.Linear(1, 1), decay=0.9998, use_warmup=warmup)
        assert [ema_decay(n, 0.9998, warmup=warmup) for n in range(1, 200)] == [
            timm.get_decay(n) for n in range(1, 200)
        ]


def test_every_n_updates_on_every_nth_optimizer_step():
    """Weights equal to the step count; decay 0.5, no warmup: updates at steps 3 and 6 only."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.5, warmup=False, every=3)
    seen = []
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.step(model)
        seen.append(ema.module.weight.item())
    # step 3: decay 0.5 -> 0.5 * 0 + 0.5 * 3; step 6: 0.5 * 1.5 + 0.5 * 6
    assert seen == [0.0, 0.0, 1.5, 1.5, 1.5, 3.75, 3.75]
    assert ema.steps == 7 and not ema.module.weight.requires_grad and not ema.module.training


def test_keep_picks_the_better_on_the_monitor():
    row = {"val_dice": 0.6, "val_ema_dice": 0.7, "val_loss": 0.3, "val_ema_loss": 0.4}
    assert kept_weights(row, "val_dice", keep="auto", mode="max") == ("ema", 0.7)
    assert kept_weights(row, "val_loss", keep="auto", mode="min") == ("model", 0.3)
    assert kept_weights(row, "val_dice", keep="model", mode="max") == ("model", 0.6)
    assert kept_weights(row, "val_loss", keep="ema", mode="min") == ("ema", 0.4)
    assert kept_weights({"val_dice": 0.5, "val_ema_dice": 0.5}, "val_dice", keep="auto", mode="max")[0] == "model"


def test_the_ema_column_is_no_monitor():
    problems = check_ema_monitor({"train.early_stopping.monitor": "val_ema_dice"})
    assert [p.key for p in problems] == ["train.early_stopping.monitor"] and "'val_dice'" in problems[0].message
    assert check_ema_monitor({"train.early_stopping.monitor": "val_dice"}) == []


def test_a_search_may_set_the_ema_keys(tmp_path):
    """Any train.ema key is a search dimension, each value checked against its schema; a bad one located."""
    space = {
        "train.ema.enabled": {"type": "categorical", "choices": [True, False]},
        "train.ema.decay": {"type": "float", "low": 0.99, "high": 1.0},
        "train.ema.keep": {"type": "categorical", "choices": ["auto", "ema"]},
    }
    problems = problems_by_key(write_params(tmp_path / "params.yaml", link=True, **{"search.space": space}))
    assert sorted(problems) == ["search.space.train.ema.decay.high"]  # decay 1.0 is no decay
    assert "train.ema.decay = 1.0" in problems["search.space.train.ema.decay.high"]


EMA = {"enabled": True, "decay": 0.9, "warmup": True, "every": 1, "keep": "auto"}


def _workspace(root: Path, **overrides: object) -> Path:
    """The tiny generated segmentation workspace (20 images of 32 px), split and model stages run."""
    return make_workspace(root, **{**TRAIN, **overrides})


def test_training_validates_both_and_keeps_the_better(tmp_path, monkeypatch):
    """One in-process run: the model's columns as before, the EMA's beside them; each epoch whose better
    score of the two (val_loss here) improves on the best so far saves those weights as the best file,
    and the summary's choice is the last one saved. With decay 0.5 the model wins epochs 1 and 2 (the
    average still holds the starting weights) and the average epoch 3, so both choices are taken."""
    monitor = {"monitor": "val_loss", "mode": "auto", "patience": None, "min_delta": 0.0}
    params = _workspace(
        tmp_path, **{"train.epochs": 3, "train.ema": {**EMA, "decay": 0.5}, "train.early_stopping": monitor}
    )
    view = load_params(params).view(train_stage.PARAMS)
    model, info = load_model(params.parent / outputs.MODEL_INIT, trust_code=True)
    t = loop.build(view, load_manifest(params.parent / outputs.MANIFEST), model, info, dist.SINGLE, CPU)
    assert t.ema is not None
    saves: list[tuple[int, str, dict[str, torch.Tensor]]] = []
    real_save = loop.save_model

    def recorded(path: Path, module: nn.Module, model_info: object) -> None:
        which = "ema" if module is t.ema.module else "model" if module is t.model else "?"
        saves.append((t.stopper.epochs, which, {k: v.clone() for k, v in module.state_dict().items()}))
        real_save(path, module, model_info)

    monkeypatch.setattr(loop, "save_model", recorded)
    history = loop.fit(t, NullRun(), root=params.parent, fingerprint="test")
    assert t.ema.steps == 3 * len(t.data.loader)
    for row in history:
        assert {"val_dice", "val_loss", "val_ema_dice", "val_ema_loss"} <= row.keys()
    assert train_history(params)[0].keys() == history[0].keys()
    scores = {line.split(",")[1] for line in (params.parent / outputs.TRAIN_VALIDATION).read_text().splitlines()[1:]}
    assert {"val_dice", "val_ema_dice"} <= scores and not {"val_loss", "val_ema_loss"} & scores  # scores, no losses
    expected, best = [], float("inf")
    for epoch, row in enumerate(history, 1):
        kept = "ema" if row["val_ema_loss"] < row["val_loss"] else "model"
        if min(row["val_loss"], row["val_ema_loss"]) < best:
            best = min(row["val_loss"], row["val_ema_loss"])
            expected.append((epoch, kept))
    assert [(epoch, which) for epoch, which, _ in saves] == expected
    assert {which for _, which in expected} == {"model", "ema"}  # the run exercises both choices
    assert t.stopper.best == best and t.ema.best_weights == expected[-1][1]
    file = load_file(params.parent / outputs.TRAIN_BEST)
    assert all(torch.equal(file[k], saves[-1][2][k]) for k in file)


def _kept_run(tmp_path: Path, keep: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """A one-epoch stage run with train.ema.keep ``keep``: its summary, best file and checkpoint."""
    params = _workspace(tmp_path, **{"train.epochs": 1, "train.ema": {**EMA, "keep": keep}})
    assert train_stage.main(["--params", str(params)]) == 0
    out = params.parent / outputs.TRAIN
    summary = yaml.safe_load((out / "summary.json").read_text())
    checkpoint = torch.load(out / "checkpoint/last.pt", weights_only=True)
    return summary, load_file(out / "best.safetensors"), checkpoint


def test_keep_ema_saves_the_average_and_says_so(tmp_path):
    summary, best, checkpoint = _kept_run(tmp_path, "ema")
    assert summary["best_weights"] == "ema"
    average, model = checkpoint["ema"]["module"], checkpoint["model"]
    assert all(torch.equal(best[k], average[k]) for k in best)
    assert any(not torch.equal(best[k], model[k]) for k in best)
    metrics = yaml.safe_load((tmp_path / "outputs/train/metrics.json").read_text())
    assert metrics == {"best_val_dice": summary["last_epoch"]["val_ema_dice"]}  # the kept weights' score


def _validation(params: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k.startswith("val_")} for row in train_history(params)]


@pytest.mark.slow
def test_resume_after_an_interruption_carries_the_ema_exactly(tmp_path, monkeypatch):
    """A run interrupted in its second epoch (after the first's checkpoint) and resumed ends with the
    uninterrupted run's average and model, bit for bit (train.deterministic on CPU). The kill -9 test of
    the train stage (tests/stages/test_train.py) runs with train.ema too."""
    overrides = {"train.epochs": 2, "train.deterministic": True, "train.ema": EMA}
    whole = _workspace(tmp_path / "whole", **overrides)
    assert train_stage.main(["--params", str(whole)]) == 0

    cut = _workspace(tmp_path / "cut", **overrides)
    real = loop.train_epoch

    def interrupted(t: loop.Trainer, epoch: int) -> dict[str, float]:
        if epoch == 1:
            raise KeyboardInterrupt
        return real(t, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_epoch", interrupted)
        assert train_stage.main(["--params", str(cut)]) == 130  # interrupted
    ckpt = cut.parent / "outputs/train/checkpoint/last.pt"
    halfway = torch.load(ckpt, weights_only=True)
    assert halfway["epoch"] == 0 and halfway["ema"]["steps"] > 0
    assert train_stage.main(["--params", str(cut)]) == 0
    a = torch.load(whole.parent / "outputs/train/checkpoint/last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["ema"]["steps"] == b["ema"]["steps"] == 2 * halfway["ema"]["steps"]
    for key in ("model", "ema"):
        x, y = (a["ema"]["module"], b["ema"]["module"]) if key == "ema" else (a["model"], b["model"])
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"resumed {key} differs"
    assert not all(torch.equal(a["ema"]["module"][k], halfway["ema"]["module"][k]) for k in a["model"])
    assert _validation(cut) == _validation(whole)
