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


def _run_argv(out):
    """`dfkd run` on 3 classes x 4 images, plain prompts, 6 tiny_cnn steps checkpointed every 3."""
    return ["run", "--config", str(TINY_YAML), f"output_dir={out}", "classes=[dog,guitar,house]", "prompts.method=plain",
            "synth.images_per_class=4", "synth.steps=2", "synth.shard_size=12", "synth.progress=false",
            "distill.student=tiny_cnn", "distill.max_steps=6", "distill.checkpointing_steps=3",
            "distill.checkpoints_total_limit=2", "distill.batch_size=4"]


def _student_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "student" / "model.safetensors"))


def test_dfkd_run_resumes_a_lost_student_at_its_checkpoint_and_ends_as_a_straight_run(tmp_path, capsys):
    """A run killed after its step-3 checkpoint (no student, no later checkpoint): `dfkd run` says it resumes,
    really starts at step 3 (the checkpoint is read, not rewritten by a run from step 0) and ends with the
    straight run's weights."""
    import shutil

    import torch

    from distill.trainer import list_checkpoints

    run = tmp_path / "run"
    assert dfkd_main(_run_argv(run)) == 0
    straight = _student_weights(run)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]
    shutil.rmtree(run / "student")
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    kept = run / "checkpoints" / "checkpoint-3"
    stamps = {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert dfkd_main(_run_argv(run)) == 0
    out = capsys.readouterr().out
    assert "resuming from the latest checkpoint" in out and "training the student" not in out
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()} == stamps
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]
    resumed = _student_weights(run)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight), [k for k in straight
                                                                         if not torch.equal(resumed[k], straight[k])]


@pytest.mark.xfail(strict=True, reason="known bug (fixed by another issue): student_done() compares only the "
                   "student name and classes, so a student trained with other distill settings counts as done "
                   "and `dfkd run` skips training")
@pytest.mark.parametrize("change", ["distill.lr=0.01", "distill.loss.temperature=2"])
def test_a_student_of_other_distill_settings_is_not_taken_as_done(tmp_path, change):
    """`dfkd run` skips distillation when student_done(cfg); a student exported under other distill settings
    must not count (student_done may also refuse it with a UserError)."""
    from fixtures import tiny_config

    from dfkd.errors import UserError
    from dfkd.pipeline import student_done
    from distill.toydata import write_synthetic_dataset
    from distill.trainer import train

    dataset = write_synthetic_dataset(tmp_path / "dataset", CLASSES, per_class=2, size=32)
    common = [f"distill.dataset={dataset}", "distill.student=tiny_cnn", "distill.max_steps=2", "distill.batch_size=4"]
    cfg = tiny_config(tmp_path / "run", *common)
    assert train(cfg).student_dir is not None
    assert student_done(cfg)
    try:
        done = student_done(tiny_config(tmp_path / "run", *common, change))
    except UserError:
        done = False
    assert not done


def test_run_stops_with_one_line_on_bad_student(tmp_path, capsys):
    rc = dfkd_main(["run", "--config", str(TINY_YAML), f"output_dir={tmp_path}", "prompts.method=plain",
                    "distill.student=not_a_model_xyz", "synth.images_per_class=2", "synth.shard_size=14"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown student 'not_a_model_xyz'" in err[0]
