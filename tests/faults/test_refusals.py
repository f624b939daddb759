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
