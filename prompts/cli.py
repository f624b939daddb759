"""``dfkd prompts learn|show`` (issue #3).

``learn`` learns the Contrastive-Prompt styles into ``OUTPUT_DIR/prompts/contrastive`` (resumable;
skipped when already finished). ``show`` prints sample prompts of ``prompts.method`` with its
text-level diversity and class consistency, and writes ``OUTPUT_DIR/prompts/show-METHOD.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dfkd.configtools import write_resolved_config
from dfkd.errors import UserError
from dfkd.runtime import atomic_write, check_device

from .config import PromptsExperiment
from .contrastive import (
    CHECKPOINT_FILE,
    META_FILE,
    ContrastiveLearner,
    bank_dir,
    learn_fingerprint,
    learn_styles,
    read_bank_meta,
    save_style_bank,
)
from .encoder import StyleTextEncoder
from .methods import PROMPT_METHODS, create_prompt_method, preflight_prompt_method
from .styles import PACKAGE_DICTIONARY, load_style_dictionary


def load_prompt_encoder(cfg: PromptsExperiment) -> StyleTextEncoder:
    """The text encoder style vectors live in (``cfg.prompt_encoder()``), fp32, on the synth device (``auto``:
    ``cuda`` when available, else ``cpu``)."""
    model_id, kind = cfg.prompt_encoder()
    device = cfg.synth.device if cfg.synth.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    return StyleTextEncoder.load(model_id, kind=kind, device=device,
                                 trust_remote_code=cfg.teacher.trust_remote_code)


# ---------------------------------------------------------------------------------------------- learn
def _finished(folder: Path, fingerprint: dict) -> bool:
    """True when a bank with this fingerprint exists, whole; a damaged one is learned again, one learned with other
    settings is an error."""
    meta = read_bank_meta(folder)  # None when absent or damaged
    if meta is None:
        return False
    if meta.get("fingerprint") != fingerprint:
        raise UserError(f"{folder} already holds styles learned with other settings (classes, encoder, seed or "
                        "prompts.contrastive); use another output_dir or delete that folder to re-learn")
    return True


def styles_learned(cfg: PromptsExperiment) -> bool:
    """True when ``OUTPUT_DIR/prompts/contrastive`` holds styles learned for this config (read-only); a bank
    learned with other settings is a UserError."""
    return _finished(bank_dir(cfg.out), learn_fingerprint(cfg.prompts, cfg.classes, cfg.seed, cfg.prompt_encoder()[0]))


def learn(cfg: PromptsExperiment, args=None) -> int:
    """``dfkd prompts learn``: learn ``K`` Contrastive-Prompt styles (docs/method.md section 3)."""
    # 1. check inputs before any model is loaded
    PROMPT_METHODS.get(cfg.prompts.method)  # an unknown name lists the valid ones
    check_device(cfg.synth.device, "synth.device")  # prompts are learned on the device synthesis runs on
    words = load_style_dictionary(cfg.prompts.style_dictionary)
    model_id = cfg.prompt_encoder()[0]
    folder = bank_dir(cfg.out)
    fingerprint = learn_fingerprint(cfg.prompts, cfg.classes, cfg.seed, model_id)
    write_resolved_config(cfg)
    if cfg.prompts.method != "contrastive":
        print(f"note: prompts.method is '{cfg.prompts.method}'; learned styles are used with prompts.method=contrastive")
    if _finished(folder, fingerprint):
        print(f"Contrastive-Prompt styles already learned in {folder}; skipping (delete it to re-learn)")
        return 0
    if (folder / META_FILE).is_file():
        print(f"dfkd prompts: the learned styles in {folder} are damaged; learning them again", file=sys.stderr)
    # 2. load the frozen text encoder and learn (resuming from the checkpoint, if any)
    encoder = load_prompt_encoder(cfg)
    learner = ContrastiveLearner(encoder, cfg.classes, cfg.prompts, cfg.seed)
    checkpoint = folder / CHECKPOINT_FILE
    if checkpoint.is_file():
        print(f"resuming from {checkpoint}")
    state = learn_styles(learner, checkpoint, fingerprint)
    # 3. diagnostics, then the bank (meta.json last: its presence marks a finished bank)
    meta = _meta(cfg, learner, state, fingerprint, words)
    before, after = meta["diagnostics"]["random_init"], meta["diagnostics"]["learned"]
    path = save_style_bank(folder, state.styles, meta)
    checkpoint.unlink(missing_ok=True)
    print(f"learned {len(state.styles)} styles for {encoder.identity.model_id} -> {path}")
    print(f"  diversity (mean pairwise cosine distance): {before['diversity']:.3f} (random init) -> {after['diversity']:.3f}")
    print(f"  class consistency (zero-shot accuracy): {before['class_consistency']:.3f} (random init) -> "
          f"{after['class_consistency']:.3f} (chance {1 / len(cfg.classes):.3f})")
    return 0


def _meta(cfg: PromptsExperiment, learner: ContrastiveLearner, state, fingerprint: dict, words: list[str]) -> dict:
    """The bank's ``meta.json``: settings, dictionary, diagnostics before and after learning, loss history."""
    c = cfg.prompts.contrastive
    before, after = learner.diagnostics(learner.initial_styles()), learner.diagnostics(state.styles)
    return {
        "encoder": learner.encoder.identity.to_dict(), "encoder_kind": cfg.prompt_encoder()[1],
        "template": cfg.prompts.template, "style_template": c.style_template,
        "positive_template": c.positive_template, "plain_template": cfg.prompts.plain_template,
        "num_styles": c.num_styles, "num_style_tokens": cfg.prompts.num_style_tokens, "seed": cfg.seed,
        "classes": list(cfg.classes),
        "dictionary": {"source": cfg.prompts.style_dictionary or PACKAGE_DICTIONARY, "words": words},
        "diagnostics": {"random_init": before, "learned": after},
        "losses": state.losses, "fingerprint": fingerprint,
    }


# ---------------------------------------------------------------------------------------------- show
def show(cfg: PromptsExperiment, args) -> int:
    """``dfkd prompts show``: sample prompts, diversity and class consistency of ``prompts.method``."""
    from .diagnostics import describe

    # 1. check inputs (method name, its files) before any model is loaded
    if args.samples < 0:
        raise UserError(f"--samples must be >= 0, got {args.samples}")
    preflight_prompt_method(cfg.prompts, cfg.out)
    # 2. build the method in its encoder's token space and measure it
    encoder = load_prompt_encoder(cfg)
    method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=encoder, seed=cfg.seed, run_dir=cfg.out)
    report = describe(method, args.samples)
    # 3. print and write the report
    _print_report(report)
    path = cfg.out / "prompts" / f"show-{method.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


def _print_report(report: dict) -> None:
    enc = report["encoder"]
    print(f"prompt method: {report['method']}   (text encoder {enc['model_id']}, d={enc['embedding_dim']}, "
          f"seed {report['seed']})")
    for name, samples in report["samples"].items():
        print(f"{name}:")
        for s in samples:
            near = f"   ~ {', '.join(s['nearest_words'])}" if "nearest_words" in s else ""
            print(f"  {s['text']}    {s['style']}{near}")
    k = report["num_styles"]
    print(f"diversity: {report['diversity']:.4f}   (mean pairwise cosine distance of {k} style-only features)")
    print(f"class consistency: {report['class_consistency']:.4f}   (zero-shot accuracy of {k} styled prompts "
          f"per class vs plain class features; chance {report['chance']:.4f})")
