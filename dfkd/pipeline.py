"""``dfkd run``: every stage in order, each skipped when its output is current, else run (and resumed).

1. ``prompts``: learn the prompt method's styles, when the method has a learning step (Contrastive-Prompt);
2. ``synth``: the synthetic dataset (finished shards are kept);
3. ``distill``: the student (resumed from the latest checkpoint when there is one);
4. ``eval``: teacher and student on ``eval.data`` (skipped when it is unset).

Every stage's ``preflight`` runs before the first stage does any work. The stages follow the contract of
:mod:`dfkd.stage` and meet only through files in OUTPUT_DIR; this loop knows none of those files.
"""

from __future__ import annotations

from distill.stage import DistillStage, EvalStage
from prompts.stage import PromptsStage
from synth.stage import SynthStage

from .config import ExperimentConfig
from .models import random_weights_note
from .runtime import is_main_process
from .stage import Stage

STAGES: tuple[Stage, ...] = (PromptsStage(), SynthStage(), DistillStage(), EvalStage())


def _say(msg: str) -> None:
    if is_main_process():
        print(f"dfkd run: {msg}", flush=True)


def run(cfg: ExperimentConfig, args=None, stages: tuple[Stage, ...] = STAGES) -> int:
    for stage in stages:  # a mistake in any stage's inputs fails now, not after the stages before it
        stage.preflight(cfg)
    for i, stage in enumerate(stages, start=1):
        head = f"{i}/{len(stages)} {stage.name}"
        if stage.is_done(cfg):
            _say(f"{head}: {stage.done_note(cfg)}")
        else:
            _say(f"{head}: {stage.run_note(cfg)}")
            stage.run(cfg)
    _summary(cfg, stages)
    return 0


def _summary(cfg: ExperimentConfig, stages: tuple[Stage, ...]) -> None:
    """The stages' outputs (marked when missing), then their reports (the evaluation table)."""
    outputs = [(name, path) for stage in stages for name, path in stage.outputs(cfg).items()]
    lines = [f"  {name:<13} {path}" + ("" if path.exists() else "  (not produced)") for name, path in outputs]
    _say("done\n" + "\n".join(lines))
    if is_main_process():
        print("".join(stage.report(cfg) for stage in stages), end="")
        note = random_weights_note(cfg.teacher.model, cfg.synth.model)
        if note:
            print(f"note: {note}")
