"""Small process and file helpers shared by every stage."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a per-process temp file and ``os.replace``: readers (and a
    resumed run after a kill) see the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def multi_process_cpu() -> bool:
    """True for a multi-process launch on a machine without accelerators: Accelerate then needs ``cpu=True``
    to join the processes with gloo (else each process silently believes it is alone and does all the work)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    xpu = getattr(torch, "xpu", None)
    has_xpu = bool(xpu is not None and xpu.is_available())
    return world > 1 and not torch.cuda.is_available() and not has_xpu
