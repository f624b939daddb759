"""Real processes: SIGKILL mid-run then resume, and two Accelerate processes (gloo on CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fixtures import REPO_ROOT
from synth_helpers import fast_args, read_rows

from dfkd.cli import main

#: enough work that a run is still going when its second shard lands
KILL_ARGS = ("synth.images_per_class=8", "synth.steps=3", "synth.shard_size=3", "synth.batch_size=3")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert main(fast_args(out, *KILL_ARGS)) == 0
    return read_rows(out / "dataset")


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    cmd = [sys.executable, "-m", "synth", *fast_args(tmp_path, *KILL_ARGS)[1:]]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data = tmp_path / "dataset" / "data"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(data.glob("train-*.parquet"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: give it more work"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_rows(tmp_path / "dataset")
    assert 0 < len(partial) < len(uninterrupted)  # killed mid-run, whole shards only
    assert main(fast_args(tmp_path, *KILL_ARGS)) == 0
    resumed = read_rows(tmp_path / "dataset")
    assert sorted(resumed) == sorted(uninterrupted)
    assert all(resumed[k] == uninterrupted[k] for k in uninterrupted)  # every column, image bytes included
    assert all(partial[k] == resumed[k] for k in partial)  # finished shards were kept, not redone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_write_the_same_rows_as_one(tmp_path, uninterrupted):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "synth",
           *fast_args(tmp_path, *KILL_ARGS)[1:]]
    run = subprocess.run(cmd, check=False, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "process 0/2: wrote" in run.stdout and "process 1/2: wrote" in run.stdout  # two real processes
    rows = read_rows(tmp_path / "dataset")
    assert sorted(rows) == sorted(uninterrupted)
    # Same prompts, styles and seeds exactly. Pixels and confidences agree up to float rounding only:
    # `accelerate launch` runs each process with OMP_NUM_THREADS=1, and CPU kernels reduce in another
    # order with another thread count (one uint8 step, which JPEG may turn into a few).
    for k, ref in uninterrupted.items():
        assert {c: v for c, v in rows[k].items() if c not in ("image", "teacher_confidence")} == \
            {c: v for c, v in ref.items() if c not in ("image", "teacher_confidence")}
        assert abs(rows[k]["teacher_confidence"] - ref["teacher_confidence"]) < 1e-3
        a, b = (_pixels(r["image"]["bytes"]) for r in (rows[k], ref))
        assert np.abs(a - b).max() <= 16 and np.abs(a - b).mean() < 0.5
    assert (tmp_path / "dataset" / "README.md").is_file()


def _pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)
