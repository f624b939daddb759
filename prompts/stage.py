"""The prompts stage of ``dfkd run`` (the contract: :mod:`dfkd.stage`): learn the prompt method's styles when
the method has a learning step (Contrastive-Prompt), else nothing."""

from __future__ import annotations

from dfkd.stage import Stage

from .config import PromptsExperiment


class PromptsStage(Stage):
    name = "prompts"

    def preflight(self, cfg: PromptsExperiment) -> None:
        from .methods import method_needs_learning
        from .styles import load_style_dictionary

        if method_needs_learning(cfg.prompts.method):  # an unknown method fails here, listing the valid ones
            load_style_dictionary(cfg.prompts.style_dictionary)
            self.is_done(cfg)  # styles learned under other settings are refused now, not after loading a model

    def is_done(self, cfg: PromptsExperiment) -> bool:
        from .cli import styles_learned
        from .methods import method_needs_learning

        return not method_needs_learning(cfg.prompts.method) or styles_learned(cfg)

    def run(self, cfg: PromptsExperiment) -> None:
        from .cli import learn

        learn(cfg)

    def done_note(self, cfg: PromptsExperiment) -> str:
        from .contrastive import bank_dir
        from .methods import method_needs_learning

        if not method_needs_learning(cfg.prompts.method):
            return f"method '{cfg.prompts.method}' needs no learning; skipping"
        return f"styles in {bank_dir(cfg.out)} are learned for this config; skipping"

    def run_note(self, cfg: PromptsExperiment) -> str:
        return f"learning the '{cfg.prompts.method}' prompt method"
