"""The one atomic writer every crash-relevant file goes through (dfkd/runtime.py)."""

from __future__ import annotations

import os

import pytest

from dfkd.runtime import atomic_folder, atomic_path, atomic_write


def test_atomic_write_text_and_bytes_replace_the_whole_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write(p, "old and long")
    atomic_write(p, "new")
    assert p.read_text(encoding="utf-8") == "new"
    atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(p, "é")
    assert p.read_bytes() == "é".encode()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]  # no temp file left behind


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.bin"]


def test_atomic_folder_swaps_in_a_whole_set_or_keeps_the_old_one(tmp_path):
    folder = tmp_path / "student"
    with atomic_folder(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"v1")
        (tmp / "config.json").write_text("{}")
        assert not folder.exists()  # nothing is visible until the block ends
    assert sorted(x.name for x in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's private 0700

    with pytest.raises(KeyboardInterrupt), atomic_folder(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"v2")
        raise KeyboardInterrupt
    assert (folder / "model.safetensors").read_bytes() == b"v1" and (folder / "config.json").is_file()

    with atomic_folder(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"v3")
    assert sorted(x.name for x in folder.iterdir()) == ["model.safetensors"]  # no file of the old set survives
    assert (folder / "model.safetensors").read_bytes() == b"v3"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["student"]  # no temp or old folder left behind


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_sweep_removes_the_temp_files_of_dead_writers_only(tmp_path):
    import subprocess
    import sys

    from dfkd.runtime import sweep_temp_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    live = str(os.getppid())
    (tmp_path / "dataset" / "data").mkdir(parents=True)
    names = {"dead": [f"dataset/.README.md.{dead}.tmp", f"dataset/data/.tmp-{dead}-train-00000.parquet",
                      f"dataset/data/..train-00000.parquet.sha256.{dead}.tmp", f".student-tmp{dead}-x1y2",
                      f".student-old-{dead}"],
             "live": [f"dataset/.README.md.{live}.tmp", f".student-tmp{live}-a1b2"],
             "ours": ["dataset/README.md", "dataset/data/train-00000.parquet", "dataset/data/.train-00000.parquet.sha256",
                      "student", ".dfkd.lock", "config.yaml"]}
    for rel in (n for group in names.values() for n in group):
        if "student" in rel:
            (tmp_path / rel).mkdir()
            (tmp_path / rel / "model.safetensors").write_bytes(b"x")
        else:
            (tmp_path / rel).write_bytes(b"x")
    removed = sweep_temp_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == sorted(names["dead"])
    assert all((tmp_path / rel).exists() for rel in names["live"] + names["ours"])
