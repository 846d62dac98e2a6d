"""A user-defined architecture (``model.name: tests.user_models:tiny_classifier``) for the tests."""

from __future__ import annotations

from torch import nn


def tiny_classifier(num_classes: int, in_chans: int = 3) -> nn.Module:
    """Global average pooling and one linear layer: the smallest classifier a user might write."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_chans, num_classes))
