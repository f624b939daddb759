"""The stage contract: the three things every step of ``dfkd run`` exposes, and nothing else.

A stage (``prompts.stage``, ``synth.stage``, ``distill.stage``) is handed the experiment config and

* ``preflight(cfg)`` checks its inputs before any work: names, paths, a folder left by another config. It
  loads no model and raises :class:`~dfkd.errors.UserError`; ``dfkd run`` calls every stage's preflight before
  the first stage starts, so a mistake in the last stage costs seconds, not a synthesis run.
* ``is_done(cfg)`` says whether the stage's output on disk is current for this config (read-only);
* ``run(cfg)`` does the work, resuming by itself where an earlier run stopped.

``dfkd run`` (``dfkd.pipeline``) is a loop over stages: it knows no file formats, names no prompt method and
changes no config. Each stage also says, in one line each, why it skips and what it is about to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Experiment(Protocol):
    """What every stage reads of an experiment; each stage's config module extends it with the sections it
    reads (``PromptsExperiment``, ``SynthExperiment``, ``DistillExperiment``). The roof's
    ``dfkd.config.ExperimentConfig`` is all of them."""

    classes: list[str]
    seed: int
    name: str | None

    @property
    def out(self) -> Path: ...

    def to_dict(self) -> dict[str, Any]: ...


class Stage:
    """Base class of a pipeline stage: subclasses implement ``is_done`` and ``run``, and override the rest as needed."""

    name: str = ""

    def preflight(self, cfg: Any) -> None:
        """Raise ``UserError`` for any input of this stage a user can get wrong; cheap, no model loaded."""

    def is_done(self, cfg: Any) -> bool:
        """True when this stage's output exists and is current for ``cfg`` (reads, never writes)."""
        raise NotImplementedError

    def run(self, cfg: Any) -> None:
        """Produce (or finish) this stage's output for ``cfg``."""
        raise NotImplementedError

    def done_note(self, cfg: Any) -> str:
        """Why the stage is skipped (shown when :meth:`is_done`)."""
        return "output is current; skipping"

    def run_note(self, cfg: Any) -> str:
        """What :meth:`run` is about to do."""
        return f"running {self.name}"

    def outputs(self, cfg: Any) -> dict[str, Path]:
        """What the stage leaves in OUTPUT_DIR, by name (listed at the end of ``dfkd run``)."""
        return {}

    def report(self, cfg: Any) -> str:
        """Results worth showing at the end of ``dfkd run`` (e.g. the evaluation table), or ``""``."""
        return ""
