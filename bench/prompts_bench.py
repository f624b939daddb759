"""Benchmark: Contrastive-Prompt learning of K=80 styles in a text encoder of real CLIP ViT-B/32 size.

The encoder is a ``CLIPTextModelWithProjection`` built from a ``CLIPTextConfig`` with the real sizes
(hidden 512, 12 layers, 8 heads, MLP 2048, projection 512, vocabulary 49,408) and random weights,
so the compute is real while nothing is downloaded; the tokenizer is the real CLIP BPE. It times
whole learning steps (forward + backward + Adam) of ``prompts.contrastive.learn_styles`` and, side
by side in the same run, the same steps with every prompt padded to all 77 positions (what a plain
``encoder.encode(...).features`` call costs), to show what trimming the padding buys.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/prompts_bench.py            # ~2-3 min on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from prompts.config import ContrastiveConfig, PromptsConfig
from prompts.contrastive import ContrastiveLearner, learn_styles
from prompts.encoder import StyleTextEncoder

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "cat", "car", "chair",
           "bird", "boat", "bottle", "cup", "tree", "airplane"]
VIT_B32_TEXT = {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048,
                "projection_dim": 512, "vocab_size": 49408, "max_position_embeddings": 77}


def build_encoder(device: str) -> StyleTextEncoder:
    """Random-weight CLIP ViT-B/32 text tower (real sizes) + the real CLIP tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from dfkd.tiny import make_clip_tokenizer

    tok = make_clip_tokenizer()
    config = CLIPTextConfig(**VIT_B32_TEXT, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(config).eval().to(device)
    return StyleTextEncoder(model, tok, "bench:clip-vit-b32-text-random")


class PaddedLearner(ContrastiveLearner):
    """The same learning step with every prompt run over all 77 positions (no trimming)."""

    def style_only(self, styles, template=None):
        return self.encoder.encode(template or self.c.style_template, None, styles).features

    def styled_class(self, styles, labels):
        return self.encoder.encode(self.cfg.template, [self.classes[i] for i in labels.tolist()], styles).features


def time_steps(learner: ContrastiveLearner, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` learning steps after ``warmup`` untimed ones."""
    learner.c.steps = warmup + steps
    stamps: list[float] = []

    def stamp(rnd: int, step: int, losses: dict) -> None:
        if learner.encoder.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    stamps.append(time.perf_counter())  # step 0 starts here (after the learner's setup)
    learn_styles(learner, None, {}, progress=False, on_step=stamp)
    return [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1:])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-styles", type=int, default=80)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--padded-steps", type=int, default=1,
                   help="timed steps of the padded path (the encoder is warm by then); 0 skips it")
    p.add_argument("--class-batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "prompts_bench.json"))
    args = p.parse_args(argv)

    encoder = build_encoder(args.device)
    cfg = PromptsConfig(contrastive=ContrastiveConfig(num_styles=args.num_styles, class_batch=args.class_batch))
    trimmed = time_steps(ContrastiveLearner(encoder, CLASSES, cfg, seed=0), args.steps, warmup=1)
    result = {
        "what": "Contrastive-Prompt learning step (forward + backward + Adam), all K styles per step",
        "command": " ".join(["HF_HUB_OFFLINE=1 .venv/bin/python bench/prompts_bench.py", *(argv or sys.argv[1:])]),
        "encoder": "CLIP ViT-B/32 text tower, real sizes, random weights", "encoder_config": VIT_B32_TEXT,
        "num_styles": args.num_styles, "class_batch": args.class_batch,
        "prompts_per_step": 2 * args.num_styles + args.class_batch,
        "timed_steps": len(trimmed), "seconds_per_step": statistics.median(trimmed), "step_seconds": trimmed,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "device": args.device,
    }
    if args.padded_steps > 0:
        padded = time_steps(PaddedLearner(encoder, CLASSES, cfg, seed=0), args.padded_steps, warmup=0)
        result.update(padded_seconds_per_step=statistics.median(padded), padded_step_seconds=padded,
                      speedup_from_trimming=statistics.median(padded) / statistics.median(trimmed))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
