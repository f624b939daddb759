"""The prompts stage of ``dfkd run`` (the contract: :mod:`dfkd.stage`): learn the prompt method's styles when
the method has a learning step (Contrastive-Prompt), else nothing."""

from __future__ import annotations

from dfkd.stage import Stage

from .cli import learn, styles_learned
from .config import PromptsExperiment
from .contrastive import bank_dir
from .methods import method_needs_learning
from .styles import load_style_dictionary


class PromptsStage(Stage):
    name = "prompts"

    def preflight(self, cfg: PromptsExperiment) -> None:
        if method_needs_learning(cfg.prompts.method):  # an unknown method fails here, listing the valid ones
            load_style_dictionary(cfg.prompts.style_dictionary)
            self.is_done(cfg)  # styles learned under other settings are refused now, not after loading a model

    def is_done(self, cfg: PromptsExperiment) -> bool:
        return not method_needs_learning(cfg.prompts.method) or styles_learned(cfg)

    def run(self, cfg: PromptsExperiment) -> None:
        learn(cfg)

    def done_note(self, cfg: PromptsExperiment) -> str:
        if not method_needs_learning(cfg.prompts.method):
            return f"method '{cfg.prompts.method}' needs no learning; skipping"
        return f"styles in {bank_dir(cfg.out)} are learned for this config; skipping"

    def run_note(self, cfg: PromptsExperiment) -> str:
        return f"learning the '{cfg.prompts.method}' prompt method"
