"""Build-once model folders (dfkd/modelcache.py): only complete folders are trusted, builds are atomic and locked,
and a process inside a distributed group (where save_pretrained writes on rank 0 only) still builds a whole folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dfkd.modelcache import MANIFEST, ensure_folder, is_complete
from dfkd.tiny import ensure_tiny


def test_a_folder_missing_a_file_is_rebuilt_not_trusted(tmp_path):
    folder = ensure_tiny("vqgan", tmp_path)
    assert is_complete(folder)
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    assert "diffusion_pytorch_model.safetensors" in listed and "config.json" in listed
    (folder / "diffusion_pytorch_model.safetensors").unlink()  # what the multi-node bug left behind
    assert not is_complete(folder)
    again = ensure_tiny("vqgan", tmp_path)
    assert again == folder and is_complete(folder)
    from diffusers import VQModel

    VQModel.from_pretrained(folder)


def test_a_truncated_file_is_not_complete(tmp_path):
    folder = ensure_tiny("vae", tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not is_complete(folder)


def test_a_folder_from_before_manifests_is_adopted_if_it_loads_else_rebuilt(tmp_path):
    folder = ensure_tiny("vae", tmp_path)
    (folder / MANIFEST).unlink()  # as the previous version left a folder: marker, no manifest
    weights = folder / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny("vae", tmp_path) == folder and is_complete(folder)
    assert weights.stat().st_mtime_ns == stamp  # adopted after a load check, not rebuilt
    (folder / MANIFEST).unlink()
    weights.unlink()  # a half folder with the old marker: must be rebuilt
    ensure_tiny("vae", tmp_path)
    assert is_complete(folder) and weights.is_file()


def test_a_build_that_does_not_load_never_appears(tmp_path):
    target = tmp_path / "broken"

    def build(tmp):
        (tmp / "config.json").write_text("{}")  # no weights

    with pytest.raises(Exception):  # noqa: B017 (whatever from_pretrained raises)
        ensure_folder(target, build, ("diffusers.VQModel",), rebuild_in=("x", "y", ()))
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".broken-")]


@pytest.mark.timeout(240)
def test_every_rank_of_a_distributed_group_builds_a_whole_folder(tmp_path):
    """Two gloo ranks, each with its own cache (two machines with local disks): transformers' save_pretrained
    writes weights only on global rank 0, yet rank 1's tiny:clip folder must be complete and load."""
    script = textwrap.dedent("""
        import os, sys
        import torch.distributed as dist
        from pathlib import Path
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
        from dfkd.tiny import ensure_tiny
        folder = ensure_tiny("clip", Path(sys.argv[3]) / f"node{rank}")
        from transformers import CLIPModel
        CLIPModel.from_pretrained(folder)
        dist.barrier()
        dist.destroy_process_group()
        print("ok", folder)
    """)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, RANK="0", WORLD_SIZE="2")  # as a launcher sets them; the build must shed them
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), port, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=220) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "ok" in out
    for r in (0, 1):
        folder = tmp_path / f"node{r}" / "v1" / "clip"
        assert is_complete(folder) and (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
