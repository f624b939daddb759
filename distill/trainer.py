"""The distillation loop on Accelerate: one loop for CPU, one GPU, many GPUs and machines.

``train(cfg)`` does, in order:

1. check every input a user can get wrong (student, dataset, eval data, checkpoint) before any heavy work;
2. build the Accelerator (mixed precision, gradient accumulation, trackers);
3. load the frozen CLIP teacher and its zero-shot head;
4. decode the synthetic set (+ few-shot real images) onto the device, or set up a DataLoader;
5. optimiser and warm-up/cosine schedule (:mod:`distill.step`); ``accelerator.prepare``;
6. resume from ``checkpoint-STEP`` when asked (model, optimiser, scheduler, RNG; data position = step);
7. train (``distill.step.train_step``): augment on the device, teacher forward (no grad) on the same view, student forward/backward;
   ``save_state`` every ``checkpointing_steps`` keeping the last ``checkpoints_total_limit``;
8. export ``OUT/student`` and evaluate on real data when ``eval.data`` is set.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfkd.configtools import write_resolved_config
from dfkd.errors import UserError
from dfkd.runtime import atomic_write, is_main_process, multi_process_cpu
from dfkd.schema import DATA_DIR, DATASET_DIR, content_id, file_sha256, json_digest, verify_dataset

from .augment import step_generator
from .config import DistillExperiment
from .data import (
    ArrowImages,
    Batch,
    BatchPlan,
    RealImages,
    TrainData,
    decode_all,
    few_shot_images,
    fits_on_device,
    load_synthetic,
    read_real,
    stored_size,
)
from .export import STUDENT_DIR
from .losses import loss_weights
from .step import StepModels, make_optimizer, make_scheduler, total_steps, train_step
from .students import (
    DistillStudent,
    Preprocessing,
    check_student_output,
    create_student,
    student_preprocessing,
)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainResult:
    steps: int  #: optimiser steps done in total
    images_per_second: float  #: steady-state training throughput (all processes), after warm-up
    final_loss: float
    student_dir: Path | None
    eval: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  #: duration of each timed step (after warm-up)


@dataclass
class Inputs:
    """Everything checked before training: built student, preprocessing, data, resume point."""

    student: torch.nn.Module
    kind: str
    pre: Preprocessing
    dataset: Any
    dataset_dir: Path
    resume_dir: Path | None
    few_shot: RealImages | None
    eval_domains: list[RealImages] | None


def checkpoint_step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def read_state(checkpoint: Path) -> dict | None:
    """The trainer state of ``checkpoint`` (written last, so its presence marks a complete checkpoint), or None
    when it is missing or damaged, or when a file of the checkpoint no longer has the sha256 it records (model,
    optimiser and RNG states: Accelerate would fail on some and silently skip others)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            return None
        files = state.get("files", {})  # absent in checkpoints written before hashes were recorded
        return state if all(file_sha256(checkpoint / name) == sha for name, sha in files.items()) else None
    except (OSError, ValueError, AttributeError):
        return None


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (with a readable trainer state) under ``OUT/checkpoints``, oldest first."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) >= 0 and read_state(p) is not None]
    return sorted(found, key=checkpoint_step)


#: distill settings that decide how a run goes, not the student it ends with (left out of its fingerprint)
_BOOKKEEPING = ("dataset", "num_workers", "device_resident", "checkpointing_steps", "checkpoints_total_limit",
                "resume_from_checkpoint", "eval_every", "log_with", "log_every", "push_to_hub", "hub_repo", "hub_private",
                "overwrite")


def synthetic_dir(cfg: DistillExperiment) -> Path:
    """The synthetic dataset distill reads: ``distill.dataset``, else ``OUTPUT_DIR/dataset``."""
    return Path(cfg.distill.dataset) if cfg.distill.dataset else cfg.out / DATASET_DIR


def fingerprint(cfg: DistillExperiment, dataset_dir: Path | None = None) -> dict[str, str]:
    """What decides the trained student: ``settings`` (the distill section but its bookkeeping, the teacher section,
    classes, seed) and, given ``dataset_dir``, ``dataset`` (the content id of its verified shards)."""
    distill = {k: v for k, v in asdict(cfg.distill).items() if k not in _BOOKKEEPING}
    fp = {"settings": json_digest([distill, asdict(cfg.teacher), list(cfg.classes), cfg.seed])}
    if dataset_dir is not None and (dataset_dir / DATA_DIR).is_dir():
        fp["dataset"] = content_id(verify_dataset(dataset_dir))
    return fp


def same_fingerprint(recorded: object, current: dict[str, str]) -> bool:
    """``recorded`` (from a checkpoint or an exported student) agrees with every part of ``current``."""
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in current.items())


def foreign_checkpoints(cfg: DistillExperiment, dataset_dir: Path | None = None) -> list[Path]:
    """Checkpoints in OUTPUT_DIR written under another :func:`fingerprint` (or before fingerprints existed)."""
    current = fingerprint(cfg, dataset_dir)
    return [p for p in list_checkpoints(cfg.out) if not same_fingerprint(read_state(p).get("fingerprint"), current)]


def find_resume_dir(cfg: DistillExperiment, resume_latest: bool = False, dataset_dir: Path | None = None) -> Path | None:
    """``distill.resume_from_checkpoint``: None, ``latest`` (error if there is none) or a checkpoint folder.
    Unset, with ``resume_latest``: the latest checkpoint when there is one (what ``dfkd run`` does).

    Only checkpoints of this config's :func:`fingerprint` count: others in OUTPUT_DIR are refused in one line, or
    with ``distill.overwrite`` left aside (training deletes them)."""
    foreign = foreign_checkpoints(cfg, dataset_dir)
    if foreign and not cfg.distill.overwrite:
        raise UserError(f"'{cfg.out / CHECKPOINTS_DIR}' holds checkpoints of other distill settings or data "
                        f"({foreign[-1].name}, ...); use another output_dir, or pass distill.overwrite=true to start over")
    ckpts = [p for p in list_checkpoints(cfg.out) if p not in foreign]
    choice = cfg.distill.resume_from_checkpoint
    if not choice:
        return ckpts[-1] if ckpts and resume_latest else None
    if choice == "latest":
        if not ckpts:
            raise UserError(f"distill.resume_from_checkpoint=latest but there is no checkpoint in "
                            f"'{cfg.out / CHECKPOINTS_DIR}'; drop the option to train from scratch")
        return ckpts[-1]
    path = Path(choice)
    state = read_state(path)
    if state is None:
        raise UserError(f"distill.resume_from_checkpoint='{choice}' is not a complete checkpoint folder (no readable "
                        f"{STATE_FILE}); use latest or an OUT/checkpoints/checkpoint-STEP folder")
    if not same_fingerprint(state.get("fingerprint"), fingerprint(cfg, dataset_dir)):
        raise UserError(f"distill.resume_from_checkpoint='{choice}' was written with other distill settings or data; "
                        "resume it with the config that wrote it, or drop the option to train from scratch")
    return path


def check_student(cfg: DistillExperiment) -> tuple[torch.nn.Module, str, Preprocessing]:
    """Check the loss names; build the student (seeded) and check it maps ``(2, 3, S, S)`` to ``(2, C)``."""
    d = cfg.distill
    loss_weights(d.loss)  # an unregistered distill.loss.extra name fails here
    torch.manual_seed(cfg.seed)
    student, kind = create_student(d.student, len(cfg.classes), d.student_kwargs, d.pretrained)
    pre = student_preprocessing(student, d.input_size, d.mean, d.std)
    check_student_output(student, d.student, len(cfg.classes), pre.input_size)
    return student, kind, pre


def read_real_inputs(cfg: DistillExperiment) -> tuple[RealImages | None, list[RealImages] | None]:
    """The few-shot domain and the evaluation domains (class folders checked against the config)."""
    d, e = cfg.distill, cfg.eval
    few = None
    if d.few_shot.shots > 0:
        domains = [d.few_shot.domain] if d.few_shot.domain else None
        few = read_real(d.few_shot.data, cfg.classes, e, domains)[0]
    evals = read_real(e.data, cfg.classes, e, e.domains) if e.data else None
    return few, evals


def preflight(cfg: DistillExperiment) -> None:
    """What `dfkd run` checks before its first stage: the student, the resume option and the real data."""
    check_student(cfg)
    find_resume_dir(cfg)
    read_real_inputs(cfg)


def check_inputs(cfg: DistillExperiment, main_first, resume_latest: bool = False) -> Inputs:
    """Step 1: every user-fixable error is raised here, before the teacher loads or training starts."""
    student, kind, pre = check_student(cfg)
    dataset_dir = synthetic_dir(cfg)
    with main_first():
        ds = load_synthetic(dataset_dir, cfg.classes)
    resume_dir = find_resume_dir(cfg, resume_latest, dataset_dir)
    few, eval_domains = read_real_inputs(cfg)
    return Inputs(student, kind, pre, ds, dataset_dir, resume_dir, few, eval_domains)


def resolve_tracker(name: str, is_main: bool) -> str | None:
    """``none`` -> None; ``tensorboard`` without tensorboard installed -> None with a one-line notice."""
    if not name or name.lower() == "none":
        return None
    if name == "tensorboard" and not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        if is_main:
            print("dfkd distill: tensorboard is not installed, logging to trackers is off "
                  "(pip install 'dfkd[tensorboard]' or set distill.log_with=none)")
        return None
    return name


def make_accelerator(cfg: DistillExperiment):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    d = cfg.distill
    project = ProjectConfiguration(project_dir=str(cfg.out), logging_dir=str(cfg.out / "logs"))
    return Accelerator(mixed_precision=d.mixed_precision, gradient_accumulation_steps=d.gradient_accumulation_steps,
                       log_with=resolve_tracker(d.log_with, is_main_process()), project_config=project,
                       cpu=multi_process_cpu())


def build_train_data(cfg: DistillExperiment, inputs: Inputs, accelerator) -> TrainData:
    """Step 4: the synthetic set (+ few-shot images) resident on the device, or behind a DataLoader."""
    d = cfg.distill
    ds = inputs.dataset
    size = stored_size(ds)
    num_items = len(ds) + (d.few_shot.shots * len(cfg.classes) if inputs.few_shot else 0)
    plan = BatchPlan(num_items, d.batch_size, accelerator.num_processes, accelerator.process_index, cfg.seed)
    nbytes = num_items * 3 * size[0] * size[1]
    syn = ArrowImages(ds, size)
    if not fits_on_device(nbytes, accelerator.device, d.device_resident):
        if inputs.few_shot is not None:
            raise UserError("few-shot training needs the synthetic set in memory; set distill.device_resident=always")
        return TrainData(plan, accelerator.device, syn, num_workers=d.num_workers)
    images, labels = decode_all(syn, num_workers=d.num_workers, show=accelerator.is_local_main_process)
    is_real = torch.zeros(len(labels), dtype=torch.bool)
    if inputs.few_shot is not None:
        real_x, real_y = few_shot_images(inputs.few_shot, d.few_shot.shots, len(cfg.classes), size, cfg.seed)
        images, labels = torch.cat([images, real_x]), torch.cat([labels, real_y])
        is_real = torch.cat([is_real, torch.ones(len(real_y), dtype=torch.bool)])
    return TrainData(plan, accelerator.device, Batch(images, labels, is_real))


def save_checkpoint(run: Run, step: int) -> Path:
    """``save_state`` into ``OUT/checkpoints/checkpoint-STEP`` (all processes), then the trainer state (the step, the
    LR schedule's state as JSON: nothing of ours is pickled, and the run's fingerprint), then prune (main process)."""
    cfg, accelerator = run.cfg, run.accelerator
    path = cfg.out / CHECKPOINTS_DIR / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()  # every rank's RNG state is on disk before the main process hashes the folder
    if accelerator.is_main_process:
        files = {f.relative_to(path).as_posix(): file_sha256(f) for f in sorted(path.rglob("*")) if f.is_file()
                 and f.name != STATE_FILE}
        state = {"step": step, "scheduler": run.scheduler.state_dict(), "fingerprint": run.fingerprint, "files": files}
        atomic_write(path / STATE_FILE, json.dumps(state))
        for old in list_checkpoints(cfg.out)[:-cfg.distill.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator, path: Path, scheduler) -> int:
    """Restore model, optimiser, RNG (Accelerate reads them weights-only) and schedule states; returns the optimiser
    step to continue from."""
    import pickle

    from safetensors import SafetensorError

    try:
        accelerator.load_state(str(path))
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, ValueError) as exc:
        detail = "a file holds more than tensors and numbers, which is never unpickled" \
            if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        raise UserError(f"checkpoint '{path}' does not load into this run ({detail}); resume another checkpoint, or "
                        "pass distill.overwrite=true to start over") from exc
    state = read_state(path)
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    else:  # an older checkpoint (its schedule pickled by Accelerate, never read now): the schedule follows the step
        for _ in range(state["step"]):
            scheduler.step()
    return state["step"]


@dataclass
class Run:
    """Everything the loop needs, built by :func:`setup`."""

    cfg: DistillExperiment
    accelerator: Any
    inputs: Inputs
    teacher: Any
    data: TrainData
    model: Any
    optimizer: Any
    scheduler: Any
    total_steps: int
    start_step: int
    pixel_stats: tuple[torch.Tensor, torch.Tensor]  #: student mean, std as (1, 3, 1, 1) on the device
    fingerprint: dict[str, str]  #: of this config and dataset, recorded in checkpoints and the exported student


def setup(cfg: DistillExperiment, resume_latest: bool = False) -> Run:
    """Steps 1-6: inputs, accelerator, teacher, data, model/optimiser/schedule, resume."""
    from prompts.teacher import load_teacher

    from .teacher import DistillTeacher

    d = cfg.distill
    accelerator = make_accelerator(cfg)
    inputs = check_inputs(cfg, accelerator.main_process_first, resume_latest)
    write_resolved_config(cfg)  # only once the inputs are accepted: a refused run leaves the folder as it was
    if accelerator.is_main_process:  # distill.overwrite: the work of other settings goes, so it is never resumed
        for old in foreign_checkpoints(cfg, inputs.dataset_dir):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    clip = load_teacher(cfg.teacher, cfg.classes, accelerator.device, accelerator.main_process_first)
    teacher = DistillTeacher(clip, inputs.pre.mean, inputs.pre.std)
    data = build_train_data(cfg, inputs, accelerator)
    steps = total_steps(cfg, data.plan.batches_per_epoch)
    model = DistillStudent(inputs.student, len(cfg.classes), teacher.feature_dim if d.loss.emb > 0 else None)
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = load_checkpoint(accelerator, inputs.resume_dir, scheduler) if inputs.resume_dir else 0
    if accelerator.is_main_process:
        accelerator.init_trackers("dfkd-distill", config=_flat_config(cfg))
    stats = tuple(torch.tensor(v, device=accelerator.device).view(1, 3, 1, 1) for v in (inputs.pre.mean, inputs.pre.std))
    return Run(cfg, accelerator, inputs, teacher, data, model, optimizer, scheduler, steps, start, stats,
               fingerprint(cfg, inputs.dataset_dir))


class Throughput:
    """Images/s over the steps after the first ``warmup`` ones (start-up and first-call costs excluded).

    Also keeps every step's duration, so a benchmark on a shared, noisy machine can use the median.
    """

    def __init__(self, images_per_step: int, warmup: int = 2):
        self.images_per_step, self.warmup = images_per_step, warmup
        self.t0: float | None = None
        self.last: float | None = None
        self.step_seconds: list[float] = []

    def update(self, steps_done: int) -> float:
        now = time.perf_counter()
        if steps_done == self.warmup:
            self.t0 = now
        elif steps_done > self.warmup and self.last is not None:
            self.step_seconds.append(now - self.last)
        self.last = now
        return self.rate

    @property
    def rate(self) -> float:
        if self.t0 is None or not self.step_seconds:
            return 0.0
        return self.images_per_step * len(self.step_seconds) / (self.last - self.t0)


def loop(run: Run, stop: int) -> tuple[int, Throughput, float, list[dict[str, float]]]:
    """Step 7: optimiser steps ``start_step + 1 .. stop``; returns (step, throughput, last loss, history)."""
    from tqdm.auto import tqdm

    cfg, acc, d = run.cfg, run.accelerator, run.cfg.distill
    ga, step, history, last_loss = d.gradient_accumulation_steps, run.start_step, [], float("nan")
    speed = Throughput(d.batch_size * ga * acc.num_processes, warmup=min(2, max(0, stop - step - 1)))
    bar = tqdm(total=run.total_steps, initial=step, desc="distill", disable=not acc.is_local_main_process,
               dynamic_ncols=True)
    run.model.train()
    models = StepModels(run.model, run.teacher, acc, run.inputs.pre.input_size, run.pixel_stats)
    for micro, batch in enumerate(run.data.batches(step * ga, stop * ga), start=step * ga):
        gen = step_generator(cfg.seed, acc.process_index, micro)
        with acc.accumulate(run.model):
            loss, parts = train_step(models, batch, cfg, gen)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            continue
        if not acc.optimizer_step_was_skipped:  # fp16: the grad scaler skipped an overflowing step
            run.scheduler.step()
        step += 1
        rate = speed.update(step - run.start_step)
        if step % d.log_every == 0 or step == stop:  # reading the loss syncs the device: not every step
            last_loss = float(loss)
            logs = {"loss": last_loss, **{f"loss_{k}": float(v) for k, v in parts.items()},
                    "lr": run.scheduler.get_last_lr()[0], "images_per_s": rate}
            history.append({"step": step, **logs})
            acc.log(logs, step=step)
            bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}")
        bar.update(1)
        if step % d.checkpointing_steps == 0:
            save_checkpoint(run, step)
        if d.eval_every and run.inputs.eval_domains and step % d.eval_every == 0 and step < run.total_steps:
            _log_eval(run, step, with_teacher=False)
    bar.close()
    return step, speed, last_loss, history


def _log_eval(run: Run, step: int, with_teacher: bool = True) -> dict[str, Any]:
    from .evaluate import Evaluator

    evaluator = Evaluator(run.teacher, run.model, run.inputs.pre, run.cfg.eval, run.accelerator)
    result = evaluator.run(run.inputs.eval_domains, with_teacher=with_teacher)
    who = ("teacher", "student") if with_teacher else ("student",)
    run.accelerator.log({f"eval/{w}/{k}": v for w in who for k, v in result[f"{w}_flat"].items()}, step=step)
    return result


def finish(run: Run, step: int) -> tuple[Path, dict[str, Any] | None]:
    """Step 8: final checkpoint, evaluation on real data, export (and Hub upload) of the student."""
    from .evaluate import eval_fingerprint, write_eval
    from .export import dataset_provenance, export_student, push_student, student_meta

    cfg, acc, d = run.cfg, run.accelerator, run.cfg.distill
    if step % d.checkpointing_steps != 0 and step > run.start_step:
        save_checkpoint(run, step)
    result = _log_eval(run, step) if run.inputs.eval_domains else None
    if result is None:
        acc.print("dfkd distill: eval.data is not set, skipping evaluation on real data "
                  "(set eval.data=ROOT of a DomainBed folder to evaluate)")
    student_dir = cfg.out / STUDENT_DIR
    if acc.is_main_process:
        meta = student_meta(cfg, run.inputs.kind, run.inputs.pre, dataset=str(run.inputs.dataset_dir),
                            **dataset_provenance(run.inputs.dataset), steps=step, images=len(run.data),
                            processes=acc.num_processes, fingerprint=run.fingerprint)
        export_student(acc.unwrap_model(run.model), student_dir, meta, metrics=result)
        if result is not None:  # after the export: eval.json is newer than the student it scored
            write_eval(result, cfg.out, {"data": cfg.eval.data, "student": str(student_dir), "teacher": cfg.teacher.model,
                                         "fingerprint": eval_fingerprint(cfg, student_dir)})
        if d.push_to_hub:
            acc.print(f"dfkd distill: pushed the student to {push_student(student_dir, d.hub_repo, d.hub_private)}")
    acc.wait_for_everyone()
    return student_dir, result


def train(cfg: DistillExperiment, stop_after_step: int | None = None, *, resume_latest: bool = False) -> TrainResult:
    """Distil the teacher into the student (see the module docstring). ``stop_after_step`` stops right after
    that step, as if the job had been killed there, leaving a resumable run (used to test resuming);
    ``resume_latest``: see :func:`find_resume_dir`."""
    run = setup(cfg, resume_latest)
    stop = min(run.total_steps, stop_after_step) if stop_after_step else run.total_steps
    step, speed, last_loss, history = loop(run, stop)
    student_dir, result = finish(run, step) if step >= run.total_steps else (None, None)
    run.accelerator.end_training()
    return TrainResult(step, speed.rate, last_loss, student_dir, result, history, speed.step_seconds)


def _flat_config(cfg: DistillExperiment) -> dict[str, Any]:
    """Scalar hyper-parameters for trackers (they reject nested values)."""
    def flat(prefix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, dict):
            return {key: v for k, child in node.items() for key, v in flat(f"{prefix}{k}.", child).items()}
        return {prefix[:-1]: node} if isinstance(node, (int, float, str, bool)) else {}

    return flat("", cfg.to_dict())
