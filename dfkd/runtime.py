"""Small process and file helpers shared by every stage."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temp file and ``os.replace``: readers, and a
    run resumed after a kill, see the old file or the new one, never a torn one."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A per-process temp path beside ``path`` for a library writer (``save_file``, ``torch.save``, ``PIL``):
    moved onto ``path`` when the block ends without error, deleted when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """A temp folder beside ``folder`` to write a set of files into; when the block ends without error it takes
    the place of ``folder`` (an older one is removed), so ``folder`` holds a whole set or its previous one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-tmp{os.getpid()}-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder gets the usual permissions
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}-old-{os.getpid()}")
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def import_user_module(name: str):
    """Import the user's module ``name`` (a plugin under ``imports:``, a ``module:attr`` student) as ``python -m``
    would: the current directory is searched too (after everything else), also under the ``dfkd`` console script."""
    import importlib
    import sys

    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)


def multi_process_cpu() -> bool:
    """True for a multi-process launch on a machine without accelerators: Accelerate then needs ``cpu=True``
    to join the processes with gloo (else each process silently believes it is alone and does all the work)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available() and not torch.xpu.is_available()


LOCK_NAME = ".dfkd.lock"

#: the temp names of :func:`atomic_path`, :func:`atomic_folder` (new and old) and the shard writer; group 1 is the pid
_TEMP_NAMES = re.compile(r"^\..+\.(\d+)\.tmp$|^\..+-tmp(\d+)-[^/]+$|^\..+-old-(\d+)$|^\.tmp-(\d+)-.+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp_files(out: str | Path) -> list[Path]:
    """Delete, anywhere under ``out``, the temp files and folders that killed commands left half-written (their
    names carry the writer's pid; those of live processes, such as the other ranks of this launch, are kept)."""
    removed = []
    for root, dirs, files in os.walk(out):
        for name in [*dirs, *files]:
            m = _TEMP_NAMES.match(name)
            pid = next((int(g) for g in m.groups() if g), None) if m else None
            if pid is None or pid == os.getpid() or _alive(pid):
                continue
            path = Path(root) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            removed.append(path)
        dirs[:] = [d for d in dirs if (Path(root) / d).exists()]
    return removed


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold ``OUTPUT_DIR/.dfkd.lock`` (an exclusive ``flock``) while one command writes into ``out``; a second command
    on the same folder is refused in one line. The kernel drops the lock of a process that dies, so a killed run
    leaves nothing to clean up (the next run says it takes over). The ranks of one launch share their main
    process's lock. Taking it sweeps the temp files of killed commands (:func:`sweep_temp_files`). The lock file goes
    when the command ends, and a folder this made, if the command left it empty."""
    import fcntl
    import socket

    from .errors import UserError

    if not is_main_process():
        yield
        return
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"another dfkd command ({f.read().strip() or 'starting'}) is writing into '{out}'; wait "
                            "for it to end, or use another output_dir") from None
        if not path.exists() or os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:  # its holder removed it meanwhile
            raise UserError(f"another dfkd command just finished with '{out}'; run the command again")
        f.seek(0)
        if f.read().strip():
            print(f"dfkd: taking over '{out}' from a command that ended without releasing it", flush=True)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        sweep_temp_files(out)
        try:
            yield
        finally:  # still holding the lock: a command that opened this file meanwhile sees it gone and stops
            path.unlink()
            if created and not any(out.iterdir()):
                out.rmdir()


def check_output_dir(path: str | Path) -> None:
    """Refuse, in one line, an ``output_dir`` that is a file or that cannot be written (read-only disk, no
    permission), before any work."""
    from .errors import UserError

    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"output_dir '{path}' is not a folder ('{existing}' is a file); pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir '{path}' cannot be written ('{existing}' is read-only for this user); "
                        "pass a folder you can write to")


def check_device(name: str, key: str) -> None:
    """Refuse, in one line, a device setting that is not a device or that this machine does not have (``auto``
    always works)."""
    import torch

    from .errors import UserError

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{key}={name} is not a device; use auto, cpu, cuda, cuda:1 or mps") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
               "mps": torch.backends.mps.is_available(), "xpu": torch.xpu.is_available()}.get(device.type, False)
    if not present:
        raise UserError(f"{key}={name} but this machine has no such device; use {key}=auto (or cpu)")


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process (Accelerate / torchrun) launch."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ``parts`` (same on every machine and Python run, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
