"""``dfkd run``: every stage in order (prompts -> synth -> distill -> eval), each skipping or resuming.

1. ``prompts learn`` (only for the contrastive method; it skips a finished bank and resumes its checkpoint);
2. ``synth`` (skipped when every planned shard and the card are there for this config; else it resumes);
3. ``distill`` (skipped when ``OUT/student`` holds a student of this config; else it resumes the latest
   checkpoint);
4. ``eval`` on ``eval.data`` (skipped when ``eval.data`` is unset, with a notice, or already done).

The stages are the same functions the single commands call; they meet only through files in OUT.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ExperimentConfig, is_main_process


def _say(msg: str) -> None:
    if is_main_process():
        print(f"dfkd run: {msg}", flush=True)


def synth_done(cfg: ExperimentConfig) -> bool:
    """True when the dataset of this config is complete (every planned shard committed, card written)."""
    from synth.plan import check_or_write_state, plan_shards
    from synth.schema import CARD_NAME, DATA_DIR, DATASET_DIR
    from synth.writer import done_shards

    dataset_dir = cfg.out / DATASET_DIR
    if not (dataset_dir / CARD_NAME).is_file() or cfg.synth.overwrite:
        return False
    check_or_write_state(dataset_dir, cfg, False, write=False)  # a dataset from another config is a UserError
    specs = plan_shards(len(cfg.classes), cfg.synth.images_per_class, cfg.synth.shard_size)
    return len(done_shards(dataset_dir / DATA_DIR, specs)) == len(specs)


def student_done(cfg: ExperimentConfig) -> bool:
    """True when OUT/student holds an exported student of this config's student and classes."""
    config = cfg.out / "student" / "config.json"
    if not config.is_file() or not (config.parent / "model.safetensors").is_file():
        return False
    meta = json.loads(config.read_text()).get("dfkd", {})
    return meta.get("classes") == list(cfg.classes) and meta.get("student") == cfg.distill.student


def eval_done(cfg: ExperimentConfig) -> bool:
    path = cfg.out / "eval.json"
    student = cfg.out / "student" / "model.safetensors"
    if not path.is_file() or not student.is_file() or path.stat().st_mtime < student.stat().st_mtime:
        return False
    return json.loads(path.read_text()).get("data") == cfg.eval.data


def run(cfg: ExperimentConfig, args=None) -> int:
    from distill.cli import evaluate as eval_main
    from distill.cli import main as distill_main
    from distill.trainer import list_checkpoints, preflight
    from prompts.cli import learn
    from prompts.methods import method_needs_learning
    from synth.cli import main as synth_main

    # 0. the later stages' inputs a user can get wrong fail now, not after synthesis
    preflight(cfg)
    # 1. prompts
    if method_needs_learning(cfg.prompts.method):
        _say(f"1/4 prompts: learning the '{cfg.prompts.method}' prompt method")
        learn(cfg, args)
    else:
        _say(f"1/4 prompts: method '{cfg.prompts.method}' needs no learning; skipping")
    # 2. synth
    if synth_done(cfg):
        _say(f"2/4 synth: dataset {cfg.out / 'dataset'} is complete; skipping")
    else:
        _say("2/4 synth: generating the synthetic dataset (finished shards are kept)")
        synth_main(cfg, args)
    # 3. distill
    evaluated = False
    if student_done(cfg):
        _say(f"3/4 distill: student {cfg.out / 'student'} already trained; skipping")
    else:
        if list_checkpoints(cfg.out) and not cfg.distill.resume_from_checkpoint:
            cfg.distill.resume_from_checkpoint = "latest"
            _say("3/4 distill: resuming from the latest checkpoint")
        else:
            _say("3/4 distill: training the student")
        distill_main(cfg, args)
        evaluated = bool(cfg.eval.data)
    # 4. eval
    if not cfg.eval.data:
        _say("4/4 eval: eval.data is not set; skipping evaluation on real data")
    elif evaluated or eval_done(cfg):
        _say(f"4/4 eval: done ({cfg.out / 'eval.md'})")
    else:
        _say("4/4 eval: evaluating teacher and student")
        eval_main(cfg, args)
    _summary(cfg, show_table=not evaluated)
    return 0


def _summary(cfg: ExperimentConfig, show_table: bool) -> None:
    out = cfg.out
    items = [("dataset", out / "dataset"), ("preview grid", out / "dataset" / "preview.png"),
             ("student", out / "student"), ("eval table", out / "eval.md")]
    lines = [f"  {name:<13} {path}" + ("" if Path(path).exists() else "  (not produced)") for name, path in items]
    _say("done\n" + "\n".join(lines))
    if show_table and (out / "eval.md").is_file() and is_main_process():
        print((out / "eval.md").read_text(), end="")
