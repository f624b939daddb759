"""One optimisation step of the method, apart from the Accelerate machinery around it (docs/method.md section 5).

``train_step`` is the whole of what the student learns from: the synthetic (and few-shot real) uint8 batch is
augmented on the device, normalised with the *student's* statistics, and that single view goes to both the frozen
teacher (which undoes the student normalisation itself) and the student; the configured losses compare them, and
the loss is back-propagated. ``make_optimizer``, ``make_scheduler`` and ``total_steps`` set how those steps are
taken. The loop, checkpoints, resume and export live in :mod:`distill.trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .augment import augment, normalize
from .config import DistillExperiment
from .losses import LossInputs, total_loss


def make_optimizer(params, cfg: DistillExperiment) -> torch.optim.Optimizer:
    d = cfg.distill
    if d.optimizer == "sgd":
        return torch.optim.SGD(params, lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=d.lr, weight_decay=d.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: DistillExperiment, total_steps: int):
    """Linear warm-up for ``warmup_steps``, then cosine to 0 (or constant)."""
    d = cfg.distill
    warm = min(d.warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if d.scheduler == "constant":
            return 1.0
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(cfg: DistillExperiment, batches_per_epoch: int) -> int:
    d = cfg.distill
    if d.max_steps:
        return d.max_steps
    return max(1, d.epochs * batches_per_epoch // d.gradient_accumulation_steps)


@dataclass
class StepModels:
    """What every training step uses besides its batch: the (prepared) student, the frozen teacher, the
    Accelerate object, and the student's input size and normalisation (``(1, 3, 1, 1)`` mean and std on the
    device)."""

    model: torch.nn.Module
    teacher: torch.nn.Module
    accelerator: Any
    size: int
    pixel_stats: tuple[torch.Tensor, torch.Tensor]


def train_step(models: StepModels, batch, cfg: DistillExperiment, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """One micro-batch: augment (B, 3, H, W) uint8 -> student view ``(B, 3, size, size)``; teacher and student
    on that same view; loss; backward. Returns the detached loss and its parts."""
    d = cfg.distill
    mean, std = models.pixel_stats
    x = normalize(augment(batch.images, models.size, d.augment, gen), mean, std)
    with models.accelerator.autocast():
        t = models.teacher(x)
        logits, emb = models.model(x)
    inputs = LossInputs(logits, t.logits, batch.labels, emb, t.features,
                        batch.is_real if cfg.distill.few_shot.shots > 0 else None, d.few_shot.ce_weight)
    loss, parts = total_loss(inputs, d.loss)
    models.accelerator.backward(loss)
    return loss.detach(), parts
