"""Early stopping on one validation metric, as an object with its own state: the loop asks it two
questions (did this epoch improve? should training stop?) and the checkpoint stores its state, so a
resumed run counts stale epochs exactly as the uninterrupted one would."""

from __future__ import annotations

from typing import Any


def resolve_monitor(task: str, monitor: str, mode: str) -> tuple[str, str]:
    """``auto`` -> val_dice (segmentation) / val_accuracy (classification) / val_map (multilabel: the
    mean average precision, which no threshold choice sways); mode from the name."""
    if monitor == "auto":
        monitor = {"segmentation": "val_dice", "multilabel": "val_map"}.get(task, "val_accuracy")
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    return monitor, mode


class EarlyStopping:
    """Tracks the best value of the monitored metric and the epochs since it last improved.

    A value improves on the best when it beats it by more than ``min_delta`` (lower for ``mode``
    "min", higher for "max"); the first value always does. Training should stop once ``patience``
    epochs in a row did not improve (``patience=None``: never)."""

    def __init__(self, *, mode: str, min_delta: float = 0.0, patience: int | None = None):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode, self.min_delta, self.patience = mode, min_delta, patience
        self.best: float | None = None
        self.best_epoch = -1  # 1-based, as history.csv counts epochs; -1 until the first step
        self.stale = 0
        self.epochs = 0
        self.pruned = False  # a search's pruner stopped the run: an early stop decided from outside

    def _beats(self, value: float, best: float) -> bool:
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when it is the new best (the weights worth keeping)."""
        self.epochs += 1
        if self.best is None or self._beats(value, self.best):
            self.best, self.best_epoch, self.stale = value, self.epochs, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.pruned or (self.patience is not None and self.stale >= self.patience)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (the settings come from params, which the checkpoint matches)."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "epochs": self.epochs,
            "pruned": self.pruned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.stale, self.epochs = state["stale"], state["epochs"]
        self.pruned = bool(state.get("pruned", False))
