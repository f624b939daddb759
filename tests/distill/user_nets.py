"""A user's own student factories, imported by tests as ``user_nets:ATTR`` (the module:attr path)."""

from torch import nn


class WrongShape(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))  # (B, 3), not (B, C)


def wrong_shape_factory(num_classes):
    return WrongShape()


def small_mlp(num_classes, hidden=8):
    """(B, 3, S, S) -> (B, num_classes): pool to 4x4, two linear layers."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
