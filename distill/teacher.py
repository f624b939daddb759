"""The distillation teacher: the frozen CLIP zero-shot classifier, fed the student's own augmented view.

The trainer hands it the student's input (normalised with the *student's* mean/std); it undoes that
normalisation and lets :class:`prompts.teacher.ClipTeacher` resize and normalise to CLIP's own
preprocessing, so teacher and student always see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prompts.teacher import ClipTeacher


@dataclass
class TeacherOutput:
    logits: torch.Tensor  #: (B, C) zero-shot logits, float32
    features: torch.Tensor  #: (B, D) L2-normalised image features g(x), float32


class DistillTeacher(nn.Module):
    """Frozen, eval-mode, ``no_grad`` wrapper of a :class:`ClipTeacher` with its zero-shot head set (load it
    with :func:`prompts.teacher.load_teacher`); ``mean``/``std`` are the student's normalisation it undoes."""

    def __init__(self, clip: ClipTeacher, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if clip.head is None:
            raise ValueError("call clip.set_classes(...) before wrapping it")
        self.clip = clip.eval()  # frozen by its text encoder (StyleTextEncoder freezes the whole CLIP model)
        stats = {"dtype": torch.float32, "device": clip.device}
        self.register_buffer("mean", torch.tensor(mean, **stats).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, **stats).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return int(self.clip.head.weights.shape[1])

    def train(self, mode: bool = True) -> DistillTeacher:
        return super().train(False)  # always eval: no dropout, frozen statistics

    @torch.no_grad()
    def forward(self, student_input: torch.Tensor) -> TeacherOutput:
        """``(B, 3, S, S)`` normalised with the student's mean/std -> logits ``(B, C)`` and features ``(B, D)``."""
        images = (student_input.float() * self.std + self.mean).clamp(0, 1)
        return self.from_pixels(images)

    @torch.no_grad()
    def from_pixels(self, images: torch.Tensor) -> TeacherOutput:
        """``(B, 3, H, W)`` float in [0, 1] -> :class:`TeacherOutput`."""
        feats = self.clip.image_features(images)
        return TeacherOutput(self.clip.logits_from_features(feats).float(), feats.float())
