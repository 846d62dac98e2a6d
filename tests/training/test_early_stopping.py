"""EarlyStopping: which epochs improve, when training stops, and a state dict that resumes exactly."""

from __future__ import annotations

import pytest

from pipeline.training.early_stopping import EarlyStopping, resolve_monitor


def steps(stopper: EarlyStopping, values: list[float]) -> list[tuple[bool, int, bool]]:
    """(improved, stale, should_stop) after each value."""
    out = []
    for value in values:
        improved = stopper.step(value)
        out.append((improved, stopper.stale, stopper.should_stop))
    return out


def test_min_mode_needs_to_beat_the_best_by_more_than_min_delta():
    stopper = EarlyStopping(mode="min", min_delta=0.1, patience=2)
    # 0.95 is lower than 1.0 but not by more than 0.1; 0.85 is (< 0.9); 0.9 and 0.8 are not < 0.75.
    assert steps(stopper, [1.0, 0.95, 0.85, 0.9, 0.8]) == [
        (True, 0, False),
        (False, 1, False),
        (True, 0, False),
        (False, 1, False),
        (False, 2, True),
    ]
    assert (stopper.best, stopper.best_epoch, stopper.epochs) == (0.85, 3, 5)


def test_max_mode_and_an_equal_value_is_no_improvement():
    stopper = EarlyStopping(mode="max", min_delta=0.0, patience=1)
    assert steps(stopper, [0.5, 0.6]) == [(True, 0, False), (True, 0, False)]
    assert steps(stopper, [0.6]) == [(False, 1, True)]
    assert (stopper.best, stopper.best_epoch) == (0.6, 2)


def test_no_patience_never_stops_and_the_first_value_always_improves():
    stopper = EarlyStopping(mode="max", patience=None)
    assert stopper.best is None and stopper.best_epoch == -1 and not stopper.should_stop
    results = steps(stopper, [-1e9] + [-2e9] * 50)
    assert results[0] == (True, 0, False)
    assert results[-1] == (False, 50, False)


def test_state_dict_round_trip_continues_like_the_uninterrupted_run():
    values = [0.9, 0.7, 0.72, 0.69, 0.71, 0.73]
    whole = EarlyStopping(mode="min", min_delta=0.015, patience=2)
    expected = steps(whole, values)

    first = EarlyStopping(mode="min", min_delta=0.015, patience=2)
    head = steps(first, values[:3])
    state = first.state_dict()
    assert state == {"best": 0.7, "best_epoch": 2, "stale": 1, "epochs": 3, "pruned": False}
    resumed = EarlyStopping(mode="min", min_delta=0.015, patience=2)
    resumed.load_state_dict(state)
    assert head + steps(resumed, values[3:]) == expected
    # 0.69 is not below 0.7 - 0.015: stale 2 after epoch 4, where the loop would stop; stale 4 at epoch 6
    assert expected[3] == (False, 2, True)
    assert (
        resumed.state_dict()
        == whole.state_dict()
        == {"best": 0.7, "best_epoch": 2, "stale": 4, "epochs": 6, "pruned": False}
    )


def test_a_pruned_run_stops_and_stays_stopped_when_resumed():
    """A search's pruner stops the run from outside: should_stop holds, and survives a checkpoint."""
    stopper = EarlyStopping(mode="max", patience=None)
    stopper.step(0.5)
    assert not stopper.should_stop
    stopper.pruned = True
    resumed = EarlyStopping(mode="max", patience=None)
    resumed.load_state_dict(stopper.state_dict())
    assert stopper.should_stop and resumed.should_stop and resumed.pruned
    old = {k: v for k, v in stopper.state_dict().items() if k != "pruned"}  # a checkpoint from before pruning
    resumed.load_state_dict(old)
    assert not resumed.pruned and not resumed.should_stop


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'min' or 'max'"):
        EarlyStopping(mode="auto")


@pytest.mark.parametrize(
    "task, monitor, mode, expected",
    [
        ("segmentation", "auto", "auto", ("val_dice", "max")),
        ("classification", "auto", "auto", ("val_accuracy", "max")),
        ("segmentation", "val_loss", "auto", ("val_loss", "min")),
        ("classification", "val_macro_f1", "auto", ("val_macro_f1", "max")),
        ("segmentation", "val_loss", "max", ("val_loss", "max")),
    ],
)
def test_resolve_monitor(task, monitor, mode, expected):
    assert resolve_monitor(task, monitor, mode) == expected
