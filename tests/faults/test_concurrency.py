"""Two commands, one output folder (issue 14, item 1): the second is refused in one line, the first is untouched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from fixtures import REPO_ROOT, TINY_YAML

from dfkd.cli import main
from dfkd.runtime import LOCK_NAME, output_lock

FAST_SYNTH = ["synth.images_per_class=4", "synth.shard_size=2", "synth.steps=1", "prompts.method=mix"]


@pytest.mark.parametrize("command", ["run", "synth", "distill", "prompts learn", "eval"])
def test_a_command_on_a_folder_another_command_holds_is_refused_and_changes_nothing(tmp_path, capsys, command):
    with output_lock(tmp_path):
        holder = (tmp_path / LOCK_NAME).read_text()
        assert main([*command.split(), "--config", str(TINY_YAML), f"output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        expected = (f"dfkd: error: another dfkd command ({holder}) is writing into '{tmp_path}'; wait for it to end, "
                    "or use another output_dir")
        assert err == [expected]
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    assert list(tmp_path.iterdir()) == []  # released and removed when the holder ends


def test_the_lock_of_a_killed_command_is_taken_over_with_a_notice(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text("pid 4242 on a-machine")  # a SIGKILLed command leaves its file, not its lock
    with output_lock(tmp_path):
        assert "taking over" in capsys.readouterr().out
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_second_synth_with_another_seed_while_the_first_writes_is_refused(tmp_path, capsys):
    """Two `dfkd synth` with different seeds in one folder once both exited 0 with the shards of both mixed; now the
    second is refused while the first runs, and the first finishes a dataset of its own seed only."""
    import datasets

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dfkd", "synth", "--config", str(TINY_YAML), f"output_dir={out}",
                              *FAST_SYNTH, "seed=0"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / LOCK_NAME).is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={out}", *FAST_SYNTH, "seed=1"]) == 2
    assert "another dfkd command (pid " in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    ds = datasets.load_dataset(str(out / "dataset"), split="train")
    assert len(ds) == 7 * 4 and not (out / LOCK_NAME).exists()
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={out}", *FAST_SYNTH, "seed=1"]) == 2  # and after:
    assert "different config" in capsys.readouterr().err  # the finished dataset is seed 0's; seed 1 is refused
