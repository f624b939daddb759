"""Run the benchmark's tasks on several cores: a small dependency-aware scheduler.

A task is a picklable call plus the kit models it needs. ``execute`` runs every task once, in list
order as far as dependencies allow, on ``jobs`` worker processes (``spawn``) of ``threads`` torch
threads each. On these machines two single-threaded processes do about twice the work of one
two-threaded process (the kernels of tiny models scale badly across threads), which is why the
benchmark runs that way. With ``jobs=1`` everything runs in this process, output on screen.

Each task's output goes to ``<log_dir>/<task>.log``; the screen gets one line per finished task.
A failing task stops the whole run (its log's tail is shown); every finished stage stays on disk,
so running the command again resumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path


@dataclass
class Task:
    key: str  #: unique, file-name safe
    call: Callable[..., object]  #: module-level function (picklable)
    args: tuple = ()
    after: tuple[str, ...] = ()  #: keys of tasks that must finish first
    label: str = field(default="")


def _set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors included: tqdm, C libraries) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _run_logged(task: Task, log: Path) -> tuple[object, float]:
    t0 = time.perf_counter()
    with _output_to(log):
        print(f"=== {task.label or task.key} ===", flush=True)
        result = task.call(*task.args)
    return result, time.perf_counter() - t0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_workers() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()


def execute(tasks: list[Task], jobs: int, threads: int, log_dir: Path) -> dict[str, object]:
    """Run ``tasks`` (dependencies first, otherwise in list order) on ``jobs`` processes; results by key."""
    keys = {t.key for t in tasks}
    missing = {a for t in tasks for a in t.after} - keys
    if missing or len(keys) != len(tasks):
        raise ValueError(f"bad task list: unknown dependencies {sorted(missing)} or duplicate keys")
    results: dict[str, object] = {}
    n = len(tasks)
    t_start = time.perf_counter()

    def report(task: Task, seconds: float) -> None:
        print(f"[{len(results)}/{n}] {task.label or task.key}: {seconds / 60:.1f} min "
              f"(elapsed {(time.perf_counter() - t_start) / 60:.1f} min)", flush=True)

    pending = list(tasks)

    def next_ready() -> Task | None:
        ready = next((t for t in pending if all(a in results for a in t.after)), None)
        if ready is not None:
            pending.remove(ready)
        return ready

    if jobs <= 1:
        _set_threads(threads)
        while (task := next_ready()) is not None:
            print(f"\n=== {task.label or task.key} ===", flush=True)
            t0 = time.perf_counter()
            results[task.key] = task.call(*task.args)
            report(task, time.perf_counter() - t0)
        return results

    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench-digits: {n} tasks on {jobs} processes of {threads} thread(s); logs in {log_dir}", flush=True)
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_set_threads, initargs=(threads,))
    running: dict[Future, Task] = {}
    try:
        while pending or running:
            while len(running) < jobs and (task := next_ready()) is not None:
                running[pool.submit(_run_logged, task, log_dir / f"{task.key}.log")] = task
            if not running:
                raise RuntimeError(f"tasks wait on each other: {[t.key for t in pending]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    results[task.key], seconds = fut.result()
                except BaseException as e:  # noqa: BLE001 (any error of the task, SystemExit from a dfkd command too, is reported, then stops the run)
                    log = log_dir / f"{task.key}.log"
                    print(f"\nbench-digits: task {task.label or task.key} failed ({type(e).__name__}: {e}); "
                          f"the end of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)
                    raise SystemExit(1) from None
                report(task, seconds)
    except BaseException:
        _stop_workers()  # do not wait for the other running tasks (they resume on the next run)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results
