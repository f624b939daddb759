"""A run refused for bad input changes nothing in its output folder (issue 14: a refused run overwrote config.yaml)."""

from __future__ import annotations

import pytest
from fixtures import TINY_YAML

from dfkd.cli import main


@pytest.mark.parametrize("command, bad", [("distill", "distill.student=no_such_net"),
                                          ("synth", "synth.backend=no_such_backend"),
                                          ("distill", "distill.resume_from_checkpoint=latest")])
def test_a_refused_command_leaves_the_output_folder_as_it_was(tmp_path, capsys, command, bad):
    (tmp_path / "config.yaml").write_text("the config of the run that made this folder\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main([command, "--config", str(TINY_YAML), f"output_dir={tmp_path}", bad]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("where", ["file", "below a file"])
@pytest.mark.parametrize("command", ["run", "synth", "distill", "prompts learn", "eval"])
def test_an_output_dir_that_is_a_file_is_refused_in_one_line(tmp_path, capsys, where, command):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    out = afile if where == "file" else afile / "run"
    assert main([*command.split(), "--config", str(TINY_YAML), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dfkd: error: output_dir '{out}' is not a folder ('{afile}' is a file); pass a folder path"]
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("device, problem", [("tpu", "is not a device"), ("cuda:7", "has no such device")])
@pytest.mark.parametrize("command", ["run", "synth", "prompts learn"])
def test_a_device_this_machine_lacks_is_refused_before_any_model_loads(tmp_path, capsys, device, problem, command):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    args = [*command.split(), "--config", str(TINY_YAML), f"output_dir={tmp_path}", f"synth.device={device}",
            "prompts.method=contrastive"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dfkd: error: synth.device={device} ") and problem in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "synth"])
def test_a_plan_too_large_for_the_machine_is_refused_before_it_is_built(tmp_path, capsys, command):
    """``images_per_class=1000000000`` once filled memory with the shard plan; now it is one line (and the cap
    is a setting: raising synth.max_images lets a big run through)."""
    args = [command, "--config", str(TINY_YAML), f"output_dir={tmp_path}", "synth.images_per_class=1000000000"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7,000,000,000 images, over synth.max_images=10,000,000" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "synth", "distill", "prompts learn", "eval"])
def test_an_output_dir_on_a_read_only_place_is_refused_in_one_line(capsys, command):
    """/proc/sys refuses writes even to root (a chmod would not stop root, who runs these tests in containers)."""
    import os
    from pathlib import Path

    if not Path("/proc/sys").is_dir() or os.access("/proc/sys", os.W_OK):
        pytest.skip("no read-only folder here to try")
    assert main([*command.split(), "--config", str(TINY_YAML), "output_dir=/proc/sys/dfkd-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("dfkd: error: output_dir '/proc/sys/dfkd-run' cannot be written ('/proc/sys' is read-only for this "
                    "user); pass a folder you can write to")]


@pytest.mark.parametrize("command", ["run", "synth"])
def test_an_absurd_resolution_is_refused_before_any_model_loads(tmp_path, capsys, command):
    assert main([command, "--config", str(TINY_YAML), f"output_dir={tmp_path}", "synth.resolution=100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synth.resolution" in err[0] and "must be at most 8192" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_resuming_a_checkpoint_of_another_student_architecture_is_one_line(tmp_path, capsys):
    """Once a state-dict traceback; the checkpoint's fingerprint holds the student, so it is refused up front."""
    from dfkd.toydata import write_synthetic_dataset

    syn = write_synthetic_dataset(tmp_path / "syn", ["dog", "guitar", "house"], per_class=4, size=32)
    common = ["--config", str(TINY_YAML), f"output_dir={tmp_path / 'run'}", "classes=[dog,guitar,house]",
              f"distill.dataset={syn}", "distill.max_steps=2", "distill.checkpointing_steps=1", "distill.batch_size=4"]
    assert main(["distill", *common, "distill.student=tiny_cnn"]) == 0
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["distill", *common, "distill.student=resnet18", "distill.resume_from_checkpoint=latest"]) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if "%|" not in e]
    assert len(err) == 1 and "holds checkpoints of other distill settings or data" in err[0]
    assert "pass distill.overwrite=true to start over" in err[0]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("command, bad, problem", [
    ("distill", "eval.data=/no/such/PACS", "eval.data='/no/such/PACS' does not exist; fix the path"),
    ("eval", "eval.student=/no/such/student", "eval.student='/no/such/student' does not exist; fix the path"),
    ("run", "prompts.style_dictionary=/no/styles.txt", "prompts.style_dictionary='/no/styles.txt' does not exist"),
    ("synth", "teacher.model=tiny:nope", "teacher.model=tiny:nope cannot load: unknown; valid: tiny:clip"),
    ("prompts learn", "teacher.templates=/no/templates.txt", "teacher.templates='/no/templates.txt' does not exist"),
])
def test_a_missing_file_or_unloadable_model_is_refused_before_any_model_library_loads(tmp_path, command, bad, problem):
    """One line, exit 2, within a couple of seconds of the process start (no torch, transformers or diffusers
    imported first), and nothing written."""
    import subprocess
    import sys
    import time

    from fixtures import REPO_ROOT

    start = time.perf_counter()
    code = ("import sys; from dfkd.cli import main; rc = main(sys.argv[1:]); "
            "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'timm') if m in sys.modules); "
            "print('imported:', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *command.split(), "--config", str(TINY_YAML),
                           f"output_dir={tmp_path / 'run'}", bad], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False, timeout=120)
    assert time.perf_counter() - start < 4  # about 0.3 s here on an idle machine
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("dfkd: error: ") and problem in lines[0], lines
    assert proc.stdout.strip() == "imported: []"
    assert not (tmp_path / "run").exists()
