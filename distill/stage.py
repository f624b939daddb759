"""The distill and eval stages of ``dfkd run`` (the contract: :mod:`dfkd.stage`): the student in
``OUTPUT_DIR/student`` (trained, or resumed from the latest checkpoint), and its evaluation on real data in
``OUTPUT_DIR/eval.json`` / ``eval.md``."""

from __future__ import annotations

import json
from pathlib import Path

from dfkd.runtime import is_main_process
from dfkd.stage import Stage

from .cli import evaluated_student, report_eval_files, run_evaluation, train_and_report
from .config import DistillExperiment
from .evaluate import eval_fingerprint
from .export import STUDENT_DIR, WEIGHTS_NAME, damaged_files
from .trainer import find_resume_dir, fingerprint, preflight, same_fingerprint, synthetic_dir


def student_is_current(cfg: DistillExperiment) -> bool:
    """True when ``OUTPUT_DIR/student`` holds a student exported under this config's fingerprint (its distill settings,
    teacher, classes and seed, and the synthetic data when that is on disk: :func:`distill.trainer.fingerprint`)."""
    config = cfg.out / STUDENT_DIR / "config.json"
    if damaged_files(config.parent) != []:  # the checksums list config.json and the weights: a missing one is damaged
        return False  # absent, damaged, or without checksums: export it again (from the last checkpoint)
    try:
        meta = json.loads(config.read_text()).get("dfkd", {})
    except (ValueError, AttributeError):
        return False  # a damaged export: train (or resume) and export again
    return same_fingerprint(meta.get("fingerprint"), fingerprint(cfg, synthetic_dir(cfg)))


def eval_is_current(cfg: DistillExperiment) -> bool:
    """True when ``OUTPUT_DIR/eval.json`` was written under this config's :func:`distill.evaluate.eval_fingerprint`
    (the same student weights, evaluation data and settings)."""
    path = cfg.out / "eval.json"
    student = evaluated_student(cfg)
    if not path.is_file() or not (student / WEIGHTS_NAME).is_file():
        return False
    try:
        recorded = json.loads(path.read_text()).get("fingerprint")
    except (ValueError, AttributeError):
        return False  # torn or foreign: evaluate again
    return recorded == eval_fingerprint(cfg, student)


class DistillStage(Stage):
    name = "distill"

    def preflight(self, cfg: DistillExperiment) -> None:
        preflight(cfg)  # the student, the resume option, the few-shot and evaluation data

    def is_done(self, cfg: DistillExperiment) -> bool:
        return student_is_current(cfg)

    def run(self, cfg: DistillExperiment) -> None:
        train_and_report(cfg, resume_latest=True)

    def done_note(self, cfg: DistillExperiment) -> str:
        return f"student {cfg.out / STUDENT_DIR} already trained; skipping"

    def run_note(self, cfg: DistillExperiment) -> str:
        resume = find_resume_dir(cfg, resume_latest=True)  # the checkpoint run() will resume, if any
        if resume is None:
            return "training the student"
        return "resuming from the latest checkpoint" if not cfg.distill.resume_from_checkpoint else f"resuming from {resume}"

    def outputs(self, cfg: DistillExperiment) -> dict[str, Path]:
        return {"student": cfg.out / STUDENT_DIR}


class EvalStage(Stage):
    name = "eval"

    def preflight(self, cfg: DistillExperiment) -> None:
        """Nothing of its own: the distill stage's preflight reads the evaluation data (distill evaluates too)."""

    def is_done(self, cfg: DistillExperiment) -> bool:
        return not cfg.eval.data or eval_is_current(cfg)

    def run(self, cfg: DistillExperiment) -> None:
        run_evaluation(cfg)
        if is_main_process():
            report_eval_files(cfg)

    def done_note(self, cfg: DistillExperiment) -> str:
        if not cfg.eval.data:
            return "eval.data is not set; skipping evaluation on real data"
        return f"done ({cfg.out / 'eval.md'})"

    def run_note(self, cfg: DistillExperiment) -> str:
        return "evaluating teacher and student"

    def outputs(self, cfg: DistillExperiment) -> dict[str, Path]:
        return {"eval table": cfg.out / "eval.md"}

    def report(self, cfg: DistillExperiment) -> str:
        path = cfg.out / "eval.md"
        return path.read_text() if cfg.eval.data and eval_is_current(cfg) and path.is_file() else ""
