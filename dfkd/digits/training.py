"""Training pieces every model of the digits kit shares: its cache key, the learning-rate schedule and one
optimiser step."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict

import torch


def recipe_key(recipe, version: int, *parents: str) -> str:
    """A 16-hex cache key of a recipe dataclass, its code version and the keys of what it was built on."""
    blob = json.dumps({"recipe": asdict(recipe), "version": version, "parents": list(parents)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return f


def optimizer_step(loss: torch.Tensor, params: Iterable[torch.nn.Parameter], opt, sched) -> float:
    """Backward, clip the gradient norm to 1, step optimiser and schedule; the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item()
