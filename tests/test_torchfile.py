"""Every torch file is read with weights_only=True: a planted pickle is refused, named, and never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline import torchfile
from pipeline.config.errors import PipelineError
from pipeline.training import checkpoint


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"fingerprint": "f", "payload": _Payload(tmp_path / "ran")}, path)
    with pytest.raises(torchfile.UnsafeFileError, match=r"refused: it holds pickled Python objects \(posix.system\)"):
        torchfile.load(path)
    with pytest.raises(PipelineError, match="delete it to train from scratch"):
        checkpoint.load_resumable(path, "f")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("content, reason", [(b"", "EOFError"), (b"garbage\x00", "Unsupported operand")])
def test_unreadable_files_name_the_path_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=rf"{path}: not a readable torch file \(.*{reason}"):
        torchfile.load(path)
    assert checkpoint.load_resumable(path, "f") is None  # a torn checkpoint: train starts fresh


def test_a_checkpoint_the_train_stage_writes_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    scheduler.step(0.5)
    state = {
        "fingerprint": "f",
        "epoch": 0,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "history": [{"epoch": 1, "val_loss": 0.5}],
        "run_id": None,
        "finished": False,
    }
    checkpoint.save(tmp_path / "last.pt", state)
    loaded = checkpoint.load_resumable(tmp_path / "last.pt", "f")
    assert loaded is not None and torch.equal(loaded["model"]["weight"], model.weight)
