"""The diffusion backbone: any diffusers text-to-image pipeline that takes ``prompt_embeds``.

Style-token hidden states from ``prompts/`` go in as ``prompt_embeds`` (``negative_prompt_embeds``
too when ``guidance_scale > 1``); a batch holds many different prompts, and each image has its own
``torch.Generator`` seeded from its record, so any image can be regenerated alone.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Sequence

import torch

from dfkd.errors import UserError

from . import DTYPES, Backend, image_generators, register_backend


def _set_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler for the diffusers class ``name`` (same config)."""
    if not name:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        valid = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
        raise UserError(f"unknown synth.scheduler '{name}'; valid diffusers schedulers include: {', '.join(valid[:12])}, ...")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def _set_attention(pipe, attention: str) -> None:
    """PyTorch SDPA is diffusers' default; xformers only when asked and installed."""
    if attention != "xformers":
        return
    if importlib.util.find_spec("xformers") is None:
        raise ImportError("synth.attention=xformers needs xformers; install the gpu extra: pip install 'dfkd[gpu]'")
    pipe.enable_xformers_memory_efficient_attention()


def required_multiple(pipe) -> int:
    """Resolutions must be a multiple of this: the VAE scale factor, and 8 (diffusers' SD input check)."""
    return math.lcm(int(getattr(pipe, "vae_scale_factor", 8) or 8), 8)


def check_pipeline(pipe, model_id: str, resolution: int) -> None:
    """Refuse pipelines we cannot drive and resolutions their VAE cannot produce (before any image)."""
    params = inspect.signature(pipe.__call__).parameters
    if "prompt_embeds" not in params or getattr(pipe, "text_encoder", None) is None:
        raise UserError(f"diffusion pipeline '{model_id}' ({type(pipe).__name__}) takes no prompt_embeds from one CLIP "
                        "text encoder; use a Stable Diffusion 1.x/2.x/Turbo pipeline")
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise UserError(f"diffusion pipeline '{model_id}' has two text encoders (SDXL-class), which synth does not "
                        "drive yet; use a Stable Diffusion 1.x/2.x/Turbo pipeline")
    multiple = required_multiple(pipe)
    if resolution % multiple:
        lo, hi = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
        raise UserError(f"synth.resolution={resolution} cannot be produced by '{model_id}' (needs a multiple of "
                        f"{multiple}); use {max(lo, multiple)} or {hi}")


@register_backend("diffusion")
class DiffusionBackend(Backend):
    """Batched text-to-image generation with prompt embeddings and per-image generators, by a loaded diffusers
    ``pipe``; ``model_id`` (the id the user gave) names it in ``generator_id``."""

    def __init__(self, pipe, model_id: str, *, steps: int, guidance_scale: float, resolution: int):
        from prompts.encoder import StyleTextEncoder

        self.pipe = pipe
        self.steps, self.guidance_scale, self.resolution = steps, guidance_scale, resolution
        self.generator_id = f"diffusion:{model_id}"
        self._encoder = StyleTextEncoder(pipe.text_encoder, pipe.tokenizer, model_id)
        self.negative_embeds: torch.Tensor | None = None  #: ``(1, 77, h)`` negative prompt (used when guidance > 1)

    @classmethod
    def load(cls, cfg, *, teacher, device: torch.device) -> DiffusionBackend:
        from diffusers import DiffusionPipeline

        from dfkd.models import load_pretrained

        s = cfg.synth
        pipe = load_pretrained(DiffusionPipeline, s.model, what="diffusion pipeline", dtype=DTYPES[s.dtype],
                               safety_checker=None, requires_safety_checker=False)
        check_pipeline(pipe, s.model, s.resolution)
        _set_scheduler(pipe, s.scheduler)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)  # our own progress bar counts images
        _set_attention(pipe, s.attention)
        if s.compile:
            pipe.unet = torch.compile(pipe.unet)
        backend = cls(pipe, s.model, steps=s.steps, guidance_scale=s.guidance_scale, resolution=s.resolution)
        if s.guidance_scale > 1:
            with torch.no_grad():
                backend.negative_embeds = backend.text_encoder.encode_text([s.negative_prompt]).hidden_states
        return backend

    @classmethod
    def text_encoder_source(cls, cfg) -> tuple[str, str]:
        """The generator pipeline's own text encoder (kind ``pipeline``): its prompt embeddings drive the UNet."""
        return cfg.synth.model, "pipeline"

    @property
    def text_encoder(self):
        return self._encoder

    @torch.no_grad()
    def generate(self, records: Sequence, encoding) -> torch.Tensor:
        """``(B, 3, R, R)`` float32 in ``[0, 1]``; ``encoding.hidden_states`` ``(B, 77, h)`` are the prompts."""
        embeds = encoding.hidden_states.to(self.pipe.device, self.pipe.dtype)
        kwargs = {}
        if self.guidance_scale > 1:
            kwargs["negative_prompt_embeds"] = self.negative_embeds.expand(len(records), -1, -1).to(embeds)
        out = self.pipe(prompt_embeds=embeds, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                        height=self.resolution, width=self.resolution, generator=image_generators(records),
                        output_type="pt", **kwargs)
        return out.images.float().clamp(0, 1)
