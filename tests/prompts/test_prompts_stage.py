"""The prompts stage of `dfkd run` (the stage contract, dfkd/stage.py) on the tiny config."""

from __future__ import annotations

from fixtures import tiny_config

from prompts.contrastive import bank_dir
from prompts.stage import PromptsStage


def test_prompts_stage_learns_a_method_that_needs_it_and_is_then_done(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "prompts.method=contrastive", "prompts.contrastive.steps=2",
                      "prompts.contrastive.num_styles=4")
    stage = PromptsStage()
    stage.preflight(cfg)
    assert not stage.is_done(cfg) and stage.run_note(cfg) == "learning the 'contrastive' prompt method"
    stage.run(cfg)
    assert stage.is_done(cfg) and (bank_dir(tmp_path) / "meta.json").is_file()
    assert "learned 4 styles" in capsys.readouterr().out
    assert stage.done_note(cfg) == f"styles in {bank_dir(tmp_path)} are learned for this config; skipping"


def test_prompts_stage_is_done_at_once_for_a_method_without_learning(tmp_path):
    cfg = tiny_config(tmp_path, "prompts.method=mix")
    stage = PromptsStage()
    stage.preflight(cfg)
    assert stage.is_done(cfg) and stage.done_note(cfg) == "method 'mix' needs no learning; skipping"
    assert not bank_dir(tmp_path).exists()
