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
