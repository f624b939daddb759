"""Two real CPU processes (gloo) under `accelerate launch -m distill`: one student, two ranks' worth of data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import REPO_ROOT, TINY_YAML


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path, syn_dataset, toy_domains):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "distill", "--config", str(TINY_YAML), f"output_dir={tmp_path}", f"distill.dataset={syn_dataset}",
           "distill.student=tiny_cnn", "distill.max_steps=3", "distill.batch_size=8", "distill.checkpointing_steps=2",
           f"eval.data={toy_domains}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "error" in line.lower()][:5]
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["dfkd"]["processes"] == 2 and config["dfkd"]["steps"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert {p.name for p in (tmp_path / "checkpoints" / "checkpoint-3").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}  # one RNG state per process
    assert proc.stdout.count("student ->") == 1  # one student, written by the main process
    evald = json.loads((tmp_path / "eval.json").read_text())
    assert all(r["images"] == 21 for r in evald["domains"])  # per-process slices summed exactly
