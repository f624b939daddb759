"""Model folders built once on first use (``tiny:*``, ``digits:*``): the one way every such cache is built.

A folder in the cache is trusted only when it is **complete**: its manifest (``dfkd_manifest.json``, every
file with its size, written last) matches what is on disk. Anything else (a folder from a killed build, a
half-written one, one whose files were deleted) is rebuilt, never used. A build

* runs under a file lock next to the folder: one process builds, the others wait, then use it. The lock
  is ``flock``, which also holds across machines on a shared filesystem that supports locks (NFSv4);
* goes into a temp folder that must load with ``from_pretrained`` before it is renamed into place;
* is written by a process that really writes: inside an initialised ``torch.distributed`` group,
  transformers' ``save_pretrained`` writes weights only on global rank 0 (on the second machine of a
  multi-node run the local main process writes the tokenizer and no model). So a process in such a
  group builds in a fresh, non-distributed Python process instead, and waits for it.

Folders built by versions before the manifest existed are verified by loading them once, then adopted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError
from .runtime import atomic_folder, atomic_write

MANIFEST = "dfkd_manifest.json"
#: environment variables that make a process believe it is one rank of a distributed launch
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def _files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def is_complete(folder: Path) -> bool:
    """True when ``folder``'s manifest exists and every file it lists is there with its size."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        return bool(listed) and all((folder / f).stat().st_size == size for f, size in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_manifest(folder: Path) -> None:
    """List every file of ``folder`` with its size, through a temp file: the manifest appears complete or not at all."""
    atomic_write(folder / MANIFEST, json.dumps({"files": _files(folder)}, indent=1))


def load_check(folder: Path, loads_with: Sequence[str]) -> None:
    """Raise unless ``folder`` loads with each ``module.Class`` in ``loads_with`` (``from_pretrained``)."""
    import importlib

    for dotted in loads_with:
        module, cls = dotted.rsplit(".", 1)
        kwargs = {"safety_checker": None, "requires_safety_checker": False} if cls.endswith("Pipeline") else {}
        getattr(importlib.import_module(module), cls).from_pretrained(folder, **kwargs)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing), held for the ``with`` block (closing the file
    releases it, also when the block raises)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def in_distributed_group() -> bool:
    """True inside an initialised ``torch.distributed`` process group (where ``save_pretrained`` is rank-0 only)."""
    if "torch" not in sys.modules:  # nothing initialised a group without importing torch
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def run_isolated(module: str, function: str, *args: str) -> None:
    """Call ``module.function(*args)`` (string arguments) in a fresh Python process outside any distributed launch."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith(("TORCHELASTIC_",
                                                                                                "ACCELERATE_"))}
    code = f"import sys, importlib; getattr(importlib.import_module({module!r}), {function!r})(*sys.argv[1:])"
    rc = subprocess.run([sys.executable, "-c", code, *args], env=env, check=False).returncode
    if rc:
        raise UserError(f"building a model in a separate process ({module}.{function}{tuple(args)}) failed with exit "
                        f"code {rc}; its output is above")


def ensure_folder(target: Path, build: Callable[[Path], object], loads_with: Sequence[str], *,
                  rebuild_in: tuple[str, str, tuple[str, ...]], legacy_marker: str | None = None) -> Path:
    """``target``, built by ``build(tmp_folder)`` unless it is complete (see the module docstring).

    ``rebuild_in`` is ``(module, function, args)``: the call that builds ``target`` in a fresh process, used
    inside a distributed group. ``legacy_marker``: a file whose presence meant "built" before manifests.
    """
    if is_complete(target):
        return target
    if in_distributed_group():
        run_isolated(rebuild_in[0], rebuild_in[1], *rebuild_in[2])
        if not is_complete(target):
            raise UserError(f"{target} is still incomplete after building it in a separate process; delete it and "
                            "run again")
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if is_complete(target):  # another process built it while we waited
            return target
        if legacy_marker and (target / legacy_marker).is_file():
            with contextlib.suppress(Exception):  # built before manifests: trusted only if it loads
                load_check(target, loads_with)
                write_manifest(target)
                return target
        return build_into(target, build, loads_with)


def build_into(target: Path, build: Callable[[Path], object], loads_with: Sequence[str]) -> Path:
    """Build into a temp folder beside ``target``, check it loads, write its manifest, then put it in place of
    whatever ``target`` held: readers see the old folder or the whole new one, never a half one."""
    with atomic_folder(target) as tmp:
        build(tmp)
        load_check(tmp, loads_with)
        write_manifest(tmp)
    return target
