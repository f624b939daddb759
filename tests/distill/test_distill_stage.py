"""The distill and eval stages of `dfkd run` (the stage contract, dfkd/stage.py): what each says it will do,
decided from the files in OUTPUT_DIR (the runs themselves are in tests/dfkd/test_pipeline.py)."""

from __future__ import annotations

import json

from fixtures import tiny_config

from distill.stage import DistillStage, EvalStage
from distill.trainer import CHECKPOINTS_DIR, STATE_FILE, fingerprint


def _checkpoint(out, step):
    folder = out / CHECKPOINTS_DIR / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint(tiny_config(out))}))
    return folder


def test_distill_stage_says_whether_it_trains_or_resumes_and_from_where(tmp_path):
    stage = DistillStage()
    assert stage.run_note(tiny_config(tmp_path)) == "training the student"
    _checkpoint(tmp_path, 4)
    assert stage.run_note(tiny_config(tmp_path)) == "resuming from the latest checkpoint"
    chosen = _checkpoint(tmp_path / "elsewhere", 2)
    cfg = tiny_config(tmp_path, f"distill.resume_from_checkpoint={chosen}")
    assert stage.run_note(cfg) == f"resuming from {chosen}"
    assert stage.done_note(cfg) == f"student {tmp_path / 'student'} already trained; skipping"


def test_eval_stage_notes_name_the_data_setting_and_the_table(tmp_path):
    stage = EvalStage()
    unset = tiny_config(tmp_path)
    assert stage.is_done(unset) and stage.done_note(unset) == "eval.data is not set; skipping evaluation on real data"
    cfg = tiny_config(tmp_path, f"eval.data={tmp_path / 'toy'}")
    assert not stage.is_done(cfg) and stage.run_note(cfg) == "evaluating teacher and student"
    assert stage.done_note(cfg) == f"done ({tmp_path / 'eval.md'})"
    assert stage.outputs(cfg) == {"eval table": tmp_path / "eval.md"} and stage.report(cfg) == ""
