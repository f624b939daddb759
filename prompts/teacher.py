"""The CLIP teacher shared by ``synth`` (teacher confidence, CLIP guidance) and ``distill``.

Images enter as ``(B, 3, H, W)`` float in ``[0, 1]``; the teacher resizes them to CLIP's input
size and normalises with CLIP's mean/std itself, so callers never need to know CLIP's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from dfkd.models import CLIP_MEAN, CLIP_STD

from .config import TeacherConfig
from .encoder import StyleTextEncoder
from .templates import load_templates
from .zeroshot import ZeroShotHead, build_zero_shot_head

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ClipTeacher(nn.Module):
    """A frozen transformers ``CLIPModel`` with its text encoder and (after :meth:`set_classes`) zero-shot head."""

    def __init__(self, model: nn.Module, tokenizer, model_id: str, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.model = model.eval()
        self.model_id = model_id
        self.text = StyleTextEncoder(model, tokenizer, model_id)  # which freezes every parameter of the model
        self.image_size = int(model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.head: ZeroShotHead | None = None

    @classmethod
    def load(cls, model_id: str, *, device: str | torch.device = "cpu", dtype: str = "fp32",
             trust_remote_code: bool = False) -> ClipTeacher:
        """Load ``model_id`` (Hub id, local folder, ``tiny:clip``) with ``from_pretrained``."""
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        from dfkd.models import load_pretrained, resolve_model_id

        model = load_pretrained(CLIPModel, model_id, what="teacher CLIP model", torch_dtype=DTYPES[dtype],
                                trust_remote_code=trust_remote_code)
        tokenizer = load_pretrained(CLIPTokenizer, model_id, what="teacher tokenizer")
        try:
            proc = CLIPImageProcessor.from_pretrained(resolve_model_id(model_id))
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except (OSError, ValueError, TypeError):
            mean, std = CLIP_MEAN, CLIP_STD
        return cls(model, tokenizer, model_id, mean, std).to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_classes(self, classes: Sequence[str], templates: str | Sequence[str] = "openai_80",
                    cache_dir=None) -> ZeroShotHead:
        """Build (or load from cache) the zero-shot head for ``classes`` over a template ensemble."""
        if isinstance(templates, str):
            templates = load_templates(templates)
        self.head = build_zero_shot_head(self.model, self.text, classes, templates, cache_dir)
        return self.head

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> CLIP input ``(B, 3, S, S)``, normalised, in the model's dtype."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = nn.functional.interpolate(images.float(), size=(self.image_size, self.image_size),
                                               mode="bicubic", align_corners=False, antialias=True)
        return ((images.float() - self.mean) / self.std).to(self.dtype)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised image features of ``images`` in ``[0, 1]``; differentiable w.r.t. ``images``."""
        out = self.model.get_image_features(pixel_values=self.preprocess(images))
        feats = getattr(out, "pooler_output", out)
        return nn.functional.normalize(feats.float(), dim=-1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("call set_classes() before asking the teacher for class logits")
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``(B, C)`` of ``images`` in ``[0, 1]``."""
        return self.logits_from_features(self.image_features(images))


def load_teacher(section: TeacherConfig, classes: Sequence[str], device: str | torch.device = "cpu",
                 first: Callable[[], AbstractContextManager] = nullcontext) -> ClipTeacher:
    """The one loader of the CLIP teacher that prompts, synth and distill share: the ``teacher`` config
    section's model in its dtype on ``device``, with its zero-shot head for ``classes`` (built once and
    cached on disk; under a multi-process launch pass Accelerate's ``main_process_first`` as ``first`` so
    that one process builds it while the others wait)."""
    clip = ClipTeacher.load(section.model, device=device, dtype=section.dtype,
                            trust_remote_code=section.trust_remote_code)
    with first():
        clip.set_classes(list(classes), section.templates)
    return clip
