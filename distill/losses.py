"""The loss zoo (docs/method.md section 5): a registry of named losses, weighted by ``distill.loss``.

Each registered loss takes a :class:`LossInputs` and the loss config and returns a scalar; the total
is ``sum_name weight[name] * loss[name]`` over the losses whose weight is > 0. Add one from a plugin
module (listed in the config's ``imports``) with::

    @register_loss("my_loss")
    def my_loss(batch: LossInputs, cfg: LossConfig) -> torch.Tensor: ...

and turn it on with ``distill.loss.extra.my_loss=0.5``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfkd.registry import Registry

from .config import LossConfig

LOSSES: Registry[Callable[[LossInputs, LossConfig], torch.Tensor]] = Registry("loss", "distill.loss.extra",
                                                                               "@register_loss")


register_loss = LOSSES.register  #: ``@register_loss(name)`` on ``fn(batch: LossInputs, cfg: LossConfig) -> scalar``


@dataclass
class LossInputs:
    """One batch: student and teacher outputs plus labels.

    ``student_logits``/``teacher_logits``: ``(B, C)``; ``labels``: ``(B,)`` int64; ``student_emb``:
    ``(B, D)`` (``h(f_S(x))``) or None; ``teacher_features``: ``(B, D)`` normalised ``g(x)`` or None;
    ``is_real``: ``(B,)`` bool, True for few-shot real images (they always get CE).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor
    student_emb: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    is_real: torch.Tensor | None = None
    real_ce_weight: float = 1.0


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``τ²·KL(p_T^τ ‖ p_S^τ)``, batch mean; ``(B, C), (B, C) -> ()``. The τ² keeps gradients τ-independent."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("kd")
def kd_loss(batch: LossInputs, cfg: LossConfig) -> torch.Tensor:
    return kd_divergence(batch.student_logits, batch.teacher_logits, cfg.temperature)


@register_loss("ce")
def ce_loss(batch: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """Cross-entropy on the synthetic label (real few-shot images are handled by :func:`real_ce_loss`)."""
    per_sample = F.cross_entropy(batch.student_logits.float(), batch.labels, reduction="none")
    if batch.is_real is not None:
        per_sample = per_sample[~batch.is_real]
    return per_sample.mean() if per_sample.numel() else batch.student_logits.sum() * 0


@register_loss("emb")
def emb_loss(batch: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """``1 - cos(h(f_S(x)), g(x))``, batch mean."""
    if batch.student_emb is None or batch.teacher_features is None:
        raise RuntimeError("the emb loss needs student_emb and teacher_features (build the student with a head)")
    cos = F.cosine_similarity(batch.student_emb.float(), batch.teacher_features.float(), dim=-1)
    return (1 - cos).mean()


def real_ce_loss(batch: LossInputs) -> torch.Tensor:
    """Cross-entropy on the few-shot real images of the batch (0 when there are none)."""
    if batch.is_real is None or not bool(batch.is_real.any()):
        return batch.student_logits.sum() * 0
    return F.cross_entropy(batch.student_logits[batch.is_real].float(), batch.labels[batch.is_real])


def loss_weights(cfg: LossConfig) -> dict[str, float]:
    """The registered losses with a weight > 0 in ``cfg`` (built-in fields, then ``cfg.extra``)."""
    weights = {name: float(cfg.extra.get(name, getattr(cfg, name, 0.0))) for name in LOSSES}
    unknown = sorted(set(cfg.extra) - set(LOSSES))
    if unknown:
        raise LOSSES.unknown(unknown[0])
    return {name: w for name, w in weights.items() if w > 0}


def total_loss(batch: LossInputs, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the enabled losses (plus few-shot CE); returns (loss, detached parts for logging).

    The parts stay tensors so that logging them does not force a device sync every step.
    """
    weights = loss_weights(cfg)
    parts = {name: LOSSES[name](batch, cfg) for name in weights}
    total = sum(w * parts[name] for name, w in weights.items())
    if batch.is_real is not None:
        parts["real_ce"] = real_ce_loss(batch)
        total = total + batch.real_ce_weight * parts["real_ce"]
    return total, {k: v.detach() for k, v in parts.items()}
