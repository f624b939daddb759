"""Two nodes over loopback from a cold cache: `accelerate launch --num_machines 2` on one machine, one process per
"node", every model cache empty. Each node's local main process is global rank 1 on the second node, where
transformers' save_pretrained writes no weights: the caches must be built whole anyway (dfkd/modelcache.py)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import REPO_ROOT, TINY_YAML

SYNTH = ("classes=[dog,guitar,house]", "synth.images_per_class=3", "synth.steps=2", "synth.shard_size=2",
         "synth.batch_size=2", "synth.progress=false", "prompts.method=mix")
DISTILL = ("distill.student=tiny_cnn", "distill.max_steps=3", "distill.batch_size=4", "distill.checkpointing_steps=100",
           "eval.data=null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(module: str, args: list[str], hf_home: Path) -> list[subprocess.CompletedProcess]:
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("DFKD_TINY_DIR", "DFKD_CACHE")}  # the cold cache only
    env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen(
        [accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip",
         "127.0.0.1", "--main_process_port", port, "--num_processes", "2", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", module, *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _rows(dataset: Path) -> list[tuple]:
    import pyarrow.parquet as pq

    keys = ["label", "index", "prompt", "style", "seed"]
    rows = []
    for f in sorted(glob.glob(str(dataset / "data" / "*.parquet"))):
        t = pq.read_table(f, columns=keys).to_pydict()
        rows += list(zip(*(t[k] for k in keys), strict=True))
    return sorted(rows)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_synth_and_distill_on_two_nodes_from_a_cold_cache(tmp_path):
    from dfkd.cli import main
    from dfkd.modelcache import is_complete

    args = ["--config", str(TINY_YAML), f"output_dir={tmp_path / 'mn'}", *SYNTH]
    for r in _two_nodes("synth", args, tmp_path / "hf-synth"):
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("clip", "sd"):  # built whole, once, in the cold cache
        assert is_complete(tmp_path / "hf-synth" / "dfkd-tiny" / "v1" / name), name
    # the same rows as one process writes
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={tmp_path / 'one'}", *SYNTH]) == 0
    two, one = _rows(tmp_path / "mn" / "dataset"), _rows(tmp_path / "one" / "dataset")
    assert len(one) == 9 and two == one
    # distill on two nodes, its own cold cache: one student, written by the main process
    runs = _two_nodes("distill", [*args, *DISTILL], tmp_path / "hf-distill")
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    assert sum(r.stdout.count("student ->") for r in runs) == 1
    student = tmp_path / "mn" / "student"
    assert (student / "model.safetensors").is_file() and (student / "config.json").is_file()
    assert is_complete(tmp_path / "hf-distill" / "dfkd-tiny" / "v1" / "clip")
