"""A small but real vision-language teacher: a transformers ``CLIPModel`` trained contrastively on
real MNIST *training* digits rendered in many styles, with web-like captions naming digit and style
(the loss counts every caption that is true of an image as a positive: UniCL-style image-text InfoNCE).

The image tower is a ViT at 32 px (patch 8); the text tower reads the real OpenAI CLIP BPE vocabulary
(ids equal ``openai/clip-vit-base-patch32``'s). The result is saved with ``save_pretrained`` and
loads through the normal ``teacher.model=<folder>`` (or ``digits:clip``). It is cached by a hash of its
recipe and :data:`TEACHER_VERSION` (see :mod:`dfkd.digits`), so it is trained once per recipe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models import CLIP_MEAN, CLIP_STD
from ..tiny import make_clip_tokenizer
from . import data
from .training import optimizer_step, warmup_cosine

CONTEXT = 32  #: text context length (tokens); captions are short
#: bump when the training code or data of the teacher changes (part of its cache key, with the recipe)
TEACHER_VERSION = 1


@dataclass
class TeacherRecipe:
    steps: int = 800
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    width: int = 128  #: both towers
    vision_layers: int = 4
    text_layers: int = 3
    heads: int = 4
    patch: int = 8
    projection: int = 64
    logit_scale_init: float = 14.3  #: CLIP's 1/0.07
    train_images: int | None = None  #: MNIST training digits used (None = all 60k)
    seed: int = 0


def build_model(r: TeacherRecipe):
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": 49408, "hidden_size": r.width, "intermediate_size": 4 * r.width,
            "num_hidden_layers": r.text_layers, "num_attention_heads": r.heads, "max_position_embeddings": CONTEXT,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": r.width, "intermediate_size": 4 * r.width, "num_hidden_layers": r.vision_layers,
              "num_attention_heads": r.heads, "image_size": data.SIZE, "patch_size": r.patch}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=r.projection))


def save_teacher(model, out: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    model.save_pretrained(out)
    proc = CLIPImageProcessor(size={"shortest_edge": data.SIZE}, crop_size={"height": data.SIZE, "width": data.SIZE},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    CLIPProcessor(image_processor=proc, tokenizer=make_clip_tokenizer(model_max_length=CONTEXT)).save_pretrained(out)


def positives(labels: torch.Tensor, rendered: data.Rendered, describes_look: list[bool]) -> torch.Tensor:
    """``(B, B)`` bool: caption ``j`` is true of image ``i`` (same digit, and the same look if ``j`` describes one).

    In a batch of 256 digits most captions are true of many images; counting them as negatives (as
    plain CLIP does) would punish the model for seeing that two sevens are both "a seven".
    """
    same_digit = labels.view(-1, 1) == labels.view(1, -1)
    keys = [data.style_key(rendered, i) for i in range(len(labels))]
    ids = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    key_ids = torch.tensor([ids[k] for k in keys])
    same_look = (key_ids.view(-1, 1) == key_ids.view(1, -1)) | ~torch.tensor(describes_look).view(1, -1)
    return same_digit & same_look


def contrastive_loss(logits_per_image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric image-text InfoNCE with every true caption (image) a positive (UniCL, Yang et al. 2022);
    with one positive per row it is CLIP's loss."""
    target = pos.float() / pos.float().sum(1, keepdim=True)
    loss_i = -(target * logits_per_image.log_softmax(1)).sum(1).mean()
    target_t = pos.t().float() / pos.t().float().sum(1, keepdim=True)
    loss_t = -(target_t * logits_per_image.t().log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def train_teacher(r: TeacherRecipe, out: Path, progress: bool = True) -> dict:
    """Train per ``r`` and save to ``out``; returns a summary (loss curve ends, wall time)."""
    torch.manual_seed(r.seed)
    gen = torch.Generator().manual_seed(r.seed)
    images, labels = data.load_mnist("train")
    if r.train_images is not None:
        images, labels = images[: r.train_images], labels[: r.train_images]
    glyphs = data.glyphs_from_mnist(images)
    labels_t = torch.from_numpy(labels)
    photos = data.photo_bank(data.TRAIN_PHOTOS)
    tok = make_clip_tokenizer(model_max_length=CONTEXT)
    model = build_model(r).train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(r.logit_scale_init))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(r.warmup, r.steps))
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    t0, losses = time.perf_counter(), []
    bar = tqdm(range(r.steps), desc="digits teacher", disable=not progress, mininterval=5)
    for _ in bar:
        idx = torch.randint(len(glyphs), (r.batch_size,), generator=gen)
        rendered = data.random_style_batch(glyphs[idx], gen, photos)
        y = labels_t[idx]
        caps = [data.caption(int(y[i]), rendered, i, gen) for i in range(len(idx))]
        enc = tok([c for c, _ in caps], padding=True, truncation=True, max_length=CONTEXT, return_tensors="pt")
        out_ = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                     pixel_values=(rendered.images - mean) / std)
        loss = contrastive_loss(out_.logits_per_image, positives(y, rendered, [d for _, d in caps]))
        losses.append(optimizer_step(loss, model.parameters(), opt, sched))
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    model.eval()
    save_teacher(model, out)
    return {"first_loss": sum(losses[:20]) / min(20, len(losses)), "last_loss": sum(losses[-20:]) / min(20, len(losses)),
            "seconds": time.perf_counter() - t0, "steps": r.steps, "batch_size": r.batch_size}
