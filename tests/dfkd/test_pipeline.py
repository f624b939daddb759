"""`dfkd run` on the tiny config: prompts -> synth -> distill -> eval, then a re-run that skips every stage."""

from __future__ import annotations

import json

import pytest
from fixtures import TINY_YAML

from dfkd.cli import main as dfkd_main

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """`dfkd run` builds Accelerate state in this process; leave none behind for later tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.slow
def test_dfkd_run_whole_pipeline_then_skips_and_resumes(tmp_path, capsys):
    from distill.toydata import write_domainbed

    toy = write_domainbed(tmp_path / "toy", CLASSES, per_class=2, size=48)
    argv = ["run", "--config", str(TINY_YAML), f"output_dir={tmp_path / 'run'}", f"eval.data={toy}",
            "prompts.contrastive.steps=10", "distill.student=tiny_cnn"]
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert (run / "prompts").is_dir() and (run / "dataset" / "preview.png").is_file()
    assert (run / "student" / "model.safetensors").is_file() and (run / "eval.md").is_file()
    for where in ("dataset", "preview grid", "student", "eval table"):
        assert where in out
    data = json.loads((run / "eval.json").read_text())
    assert [r["domain"] for r in data["domains"]] == ["painting", "photo", "sketch"] and data["data"] == str(toy)
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["dfkd"]["images"] == 56 and config["label_names"] == CLASSES  # read the real synth output

    # a second run skips every stage and keeps the student
    mtime = (run / "student" / "model.safetensors").stat().st_mtime_ns
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    assert "synth: dataset" in out and "complete; skipping" in out and "already trained; skipping" in out
    assert (run / "student" / "model.safetensors").stat().st_mtime_ns == mtime

    # a lost student (a killed export) is rebuilt from the latest checkpoint, not from scratch
    for f in (run / "student").iterdir():
        f.unlink()
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming from the latest checkpoint" in out and (run / "student" / "model.safetensors").is_file()


def test_run_stops_with_one_line_on_bad_student(tmp_path, capsys):
    rc = dfkd_main(["run", "--config", str(TINY_YAML), f"output_dir={tmp_path}", "prompts.method=plain",
                    "distill.student=not_a_model_xyz", "synth.images_per_class=2", "synth.shard_size=14"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown student 'not_a_model_xyz'" in err[0]
