"""Losses: the ``loss`` section -> an ``nn.Module`` called as ``loss(logits, target)``, one family per module.

Every loss takes logits and computes in float32 with autocast switched off (:mod:`.wrappers`).

- :mod:`.base`: the :data:`losses` registry (``python -m pipeline list losses``), the modes, shared helpers
- :mod:`.overlap`: ``dice``, ``iou``, ``tversky``
- :mod:`.cross_entropy`: ``bce``, ``cross_entropy``
- :mod:`.focal`: ``focal``
- :mod:`.asymmetric`: ``asymmetric`` (multi-label ASL)
- :mod:`.combined`: ``dice_bce``, ``sum`` (weighted terms)
- :mod:`.wrappers`: a user function as a module, the float32 wrapper
- :mod:`.auto`: ``weight: auto`` / ``pos_weight: auto`` from the training split's class counts
- :mod:`.section`: :func:`build_loss` (the section -> the module) and :func:`check_loss` (``validate``)

Importing the package registers every built-in loss and the check.
"""

from __future__ import annotations

from pipeline.training.losses import asymmetric, combined, cross_entropy, focal, overlap  # noqa: F401 - they register
from pipeline.training.losses.base import BINARY, MULTICLASS, MULTILABEL, losses
from pipeline.training.losses.section import build_loss, check_loss

__all__ = ["BINARY", "MULTICLASS", "MULTILABEL", "build_loss", "check_loss", "losses"]
