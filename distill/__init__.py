"""Distillation of the CLIP teacher into a student on the synthetic set, and evaluation on real data.

``from distill import load_student`` loads an exported student (imported lazily: ``python -m distill``
stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_student", "register_loss", "register_student"]


_HOMES = {"load_student": ".export", "register_student": ".students", "register_loss": ".losses"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
