"""``dfkd distill`` and ``dfkd eval`` (also ``python -m distill`` and ``accelerate launch -m distill``)."""

from __future__ import annotations

from pathlib import Path

from dfkd.errors import UserError
from dfkd.models import random_weights_note
from dfkd.runtime import is_main_process

from .config import DistillExperiment
from .export import STUDENT_DIR


def main(cfg: DistillExperiment, args=None) -> int:
    """Train (or resume) the student, export it to OUTPUT_DIR/student and evaluate it when eval.data is set."""
    result = train_and_report(cfg)
    if is_main_process() and result.eval is not None:
        from .evaluate import markdown_table

        print(markdown_table(result.eval), end="")
    return 0


def train_and_report(cfg: DistillExperiment, resume_latest: bool = False):
    """:func:`distill.trainer.train` (``resume_latest``: resume the latest checkpoint unless the config names
    one), with its one-line report."""
    from .trainer import train

    result = train(cfg, resume_latest=resume_latest)
    if is_main_process():
        print(f"dfkd distill: {result.steps} steps, {result.images_per_second:.0f} images/s; student -> {result.student_dir}")
        if result.eval is not None:
            print(f"dfkd distill: evaluation -> {cfg.out / 'eval.md'}")
    return result


def evaluate(cfg: DistillExperiment, args=None) -> int:
    """Per-domain top-1 of teacher and student on eval.data; writes OUTPUT_DIR/eval.json and eval.md."""
    result = run_evaluation(cfg)
    if is_main_process():
        from .evaluate import markdown_table

        print(markdown_table(result), end="")
        note = random_weights_note(cfg.teacher.model)
        if note:
            print(f"note: {note}")
        report_eval_files(cfg)
    return 0


def report_eval_files(cfg: DistillExperiment) -> None:
    print(f"dfkd eval: results -> {cfg.out / 'eval.json'} and {cfg.out / 'eval.md'}")


def evaluated_student(cfg: DistillExperiment) -> Path:
    """The student folder ``dfkd eval`` scores: ``eval.student``, else ``OUTPUT_DIR/student``."""
    return Path(cfg.eval.student) if cfg.eval.student else cfg.out / STUDENT_DIR


def run_evaluation(cfg: DistillExperiment) -> dict:
    """Load the exported student and the teacher, score every domain of eval.data, write the results."""
    from accelerate import Accelerator

    from dfkd.runtime import multi_process_cpu
    from prompts.teacher import load_teacher

    from .data import read_real
    from .evaluate import Evaluator, eval_fingerprint, write_eval
    from .export import load_student
    from .teacher import DistillTeacher

    e = cfg.eval
    if not e.data:
        raise UserError("eval.data is not set; pass eval.data=ROOT (a DomainBed folder ROOT/<domain>/<class>/*.jpg) "
                        "or a Hugging Face dataset with a domain column")
    domains = read_real(e.data, cfg.classes, e, e.domains)
    student_dir = evaluated_student(cfg)
    accelerator = Accelerator(mixed_precision=cfg.distill.mixed_precision, cpu=multi_process_cpu())
    student = load_student(student_dir, accelerator.device, trust_code=cfg.distill.student)  # the code it names
    if student.classes != list(cfg.classes):
        raise UserError(f"the student at '{student_dir}' was trained on classes {student.classes[:4]}..., not the "
                        "config's; evaluate it with the config it was trained with")
    clip = load_teacher(cfg.teacher, cfg.classes, accelerator.device, accelerator.main_process_first)
    teacher = DistillTeacher(clip, student.pre.mean, student.pre.std)
    evaluator = Evaluator(teacher, student.model, student.pre, e, accelerator, cfg.distill.num_workers)
    result = evaluator.run(domains)
    if accelerator.is_main_process:
        write_eval(result, cfg.out, {"data": e.data, "student": str(student_dir), "teacher": cfg.teacher.model,
                                     "fingerprint": eval_fingerprint(cfg, student_dir)})
    return result


def export_onnx(args) -> int:
    """``dfkd export-onnx STUDENT_DIR``: the ONNX file, its parity with PyTorch, the card's ONNX section."""
    from .onnx import TOLERANCE
    from .onnx import export_onnx as export

    folder = Path(args.student_dir)
    if not folder.is_dir():
        raise UserError(f"no student folder at '{folder}'; pass the student/ folder `dfkd distill` wrote")
    result = export(folder, trust_code=args.trust_code, opset=args.opset)
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in result["max_abs_diff"].items())
    spec = result["spec"]
    print(f"wrote {result['path']}: input pixel_values (batch, 3, {spec['shape'][-1]}, {spec['shape'][-1]}) normalised "
          f"with mean {tuple(round(v, 4) for v in spec['mean'])} and std {tuple(round(v, 4) for v in spec['std'])}; "
          f"outputs {', '.join(spec['outputs'])}")
    print(f"parity with PyTorch on a batch of {result['batch']} (onnxruntime, CPU): max |difference| {diffs} "
          f"(at most {TOLERANCE}); the model card's ONNX section shows how to run it")
    return 0
