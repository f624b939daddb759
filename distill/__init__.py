"""Distillation of the CLIP teacher into a student on the synthetic set, and evaluation on real data.

``from distill import load_student`` loads an exported student (imported lazily: ``python -m distill``
stays fast).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_student", "register_loss", "register_student"]


def __getattr__(name: str) -> Any:
    if name == "load_student":
        from .export import load_student

        return load_student
    if name == "register_student":
        from .students import register_student

        return register_student
    if name == "register_loss":
        from .losses import register_loss

        return register_loss
    raise AttributeError(name)
