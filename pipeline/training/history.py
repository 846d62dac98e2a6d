"""The per-epoch history as the files DVC plots read: ``history.csv`` (one row per epoch) and
``validation.csv`` (the validation scores in long form, whatever the task calls them)."""

from __future__ import annotations

import csv
import io


def history_csv(rows: list[dict[str, float]]) -> str:
    """The per-epoch rows as CSV text (columns in first-seen order): DVC plots read it."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def validation_csv(rows: list[dict[str, float]]) -> str:
    """The validation scores (every ``val_*`` column but the losses) in long form, ``epoch,metric,value``:
    one DVC plot draws them whatever the task's scores are called (dvc.yaml's "validation")."""
    lines = ["epoch,metric,value"]
    lines += [
        f"{row['epoch']},{key},{value!r}"
        for row in rows
        for key, value in row.items()
        if key.startswith("val_") and not key.endswith("_loss")  # val_loss, and train.ema's val_ema_loss
    ]
    return "\n".join(lines) + "\n"
