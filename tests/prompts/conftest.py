"""Fixtures of the prompts tests: the style-token encoders of tiny:clip and tiny:sd, and a small
learned Contrastive-Prompt bank per encoder."""

from __future__ import annotations

import pytest
from prompts_helpers import CLASSES, ENCODERS, small_contrastive

from prompts.encoder import StyleTextEncoder


@pytest.fixture(scope="session")
def encoders(_tiny_cache) -> dict[str, StyleTextEncoder]:
    return {name: StyleTextEncoder.load(model_id, kind=kind) for name, (model_id, kind) in ENCODERS.items()}


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request, encoders) -> StyleTextEncoder:
    """Each test using it runs on the tiny CLIP text tower and on the tiny SD pipeline's text encoder."""
    return encoders[request.param]


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, encoders):
    """A run folder holding a bank learned for each tiny encoder: ``{name: run_dir}``."""
    from prompts.contrastive import (
        ContrastiveLearner,
        bank_dir,
        learn_fingerprint,
        learn_styles,
        save_style_bank,
    )

    runs = {}
    for name, enc in encoders.items():
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        cfg = small_contrastive()
        fp = learn_fingerprint(cfg, CLASSES, 0, enc.identity.model_id)
        state = learn_styles(ContrastiveLearner(enc, CLASSES, cfg, seed=0), None, fp, progress=False)
        save_style_bank(bank_dir(run_dir), state.styles, {"encoder": enc.identity.to_dict(), "seed": 0,
                                                          "template": cfg.template, "fingerprint": fp})
        runs[name] = run_dir
    return runs
