"""The diffusion backbone: a diffusers text-to-image pipeline of the SD 1.x/2.x/Turbo, SDXL(-Turbo), SD 3/3.5 or
FLUX.1 family (:mod:`prompts.families`).

Style-token encodings from ``prompts/`` go in as ``prompt_embeds`` and, for SDXL, SD 3 and FLUX, as
``pooled_prompt_embeds`` (the negative ones too when ``guidance_scale > 1``, except for FLUX, whose guidance
is distilled); a batch holds many different prompts, and each image has its own ``torch.Generator``
seeded from its record, so any image can be regenerated alone.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Sequence

import torch

from dfkd.errors import UserError
from prompts.families import family_of_pipeline

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
    """Resolutions must be a multiple of this: the VAE scale factor times the transformer's patch (SD 3) or FLUX's
    2x2 latent packing, and 8 (diffusers' SD input check)."""
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        factor *= 2 if family_of_pipeline(pipe) == "flux" else int(getattr(transformer.config, "patch_size", 1) or 1)
    return math.lcm(factor, 8)


def check_pipeline(pipe, model_id: str, resolution: int) -> None:
    """Refuse pipelines we cannot drive and resolutions their VAE cannot produce (before any image)."""
    params = inspect.signature(pipe.__call__).parameters
    if "prompt_embeds" not in params or getattr(pipe, "text_encoder", None) is None:
        raise UserError(f"diffusion pipeline '{model_id}' ({type(pipe).__name__}) takes no prompt_embeds from a CLIP "
                        "text encoder; use a Stable Diffusion 1.x/2.x/Turbo, SDXL, SD 3 or FLUX.1 pipeline")
    family = family_of_pipeline(pipe)
    if family != "sd" and "pooled_prompt_embeds" not in params:
        raise UserError(f"diffusion pipeline '{model_id}' ({type(pipe).__name__}) has the text encoders of {family} "
                        "but takes no pooled_prompt_embeds; use the text-to-image pipeline of that family")
    multiple = required_multiple(pipe)
    if resolution % multiple:
        lo, hi = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
        raise UserError(f"synth.resolution={resolution} cannot be produced by '{model_id}' (needs a multiple of "
                        f"{multiple}); use {max(lo, multiple)} or {hi}")


def check_offload(offload: str, on_gpu: bool, device: str) -> None:
    """``synth.offload`` moves components to a GPU: refused without one."""
    if offload != "none" and not on_gpu:
        raise UserError(f"synth.offload={offload} moves components to a GPU while they run, but synth.device is "
                        f"{device} and no GPU is in use; set synth.offload=none on a CPU")


def _place(pipe, device: torch.device, offload: str, vae_tiling: bool, vae_slicing: bool):
    """Put the pipeline on ``device`` (or offload it to the CPU between uses) and set the VAE's memory options."""
    if offload != "none":
        check_offload(offload, device.type == "cuda", str(device))
        getattr(pipe, f"enable_{offload}_cpu_offload")(device=device)
    else:
        pipe = pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    return pipe


@register_backend("diffusion")
class DiffusionBackend(Backend):
    """Batched text-to-image generation with prompt embeddings and per-image generators, by a loaded diffusers
    ``pipe``; ``model_id`` (the id the user gave) names it in ``generator_id``."""

    def __init__(self, pipe, model_id: str, *, steps: int, guidance_scale: float, resolution: int):
        from prompts.families import PipelineTextEncoder

        self.pipe = pipe
        self.steps, self.guidance_scale, self.resolution = steps, guidance_scale, resolution
        self.generator_id = f"diffusion:{model_id}"
        self._encoder = PipelineTextEncoder.from_pipeline(pipe, model_id)
        self.family = getattr(self._encoder, "family", "sd")  # a single CLIP encoder: SD 1.x/2.x/Turbo
        self.negative_embeds: torch.Tensor | None = None  #: ``(1, L, h)`` negative prompt (used when guidance > 1)
        self.negative_pooled: torch.Tensor | None = None  #: ``(1, P)`` its pooled embedding (SDXL, SD 3)

    @property
    def uses_negative(self) -> bool:
        """Classifier-free guidance with a negative prompt: guidance > 1, and not FLUX (guidance-distilled)."""
        return self.guidance_scale > 1 and self.family != "flux"

    def set_negative_prompt(self, text: str) -> None:
        """Encode the negative prompt once (zeros for an empty one where the pipeline says so, as SDXL does)."""
        enc = self.text_encoder.encode_text([text])
        if not text and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            enc.hidden_states, enc.pooled = enc.hidden_states.zero_(), enc.pooled.zero_()
        self.negative_embeds, self.negative_pooled = enc.hidden_states, enc.pooled

    @classmethod
    def preflight(cls, cfg) -> None:
        """``synth.offload`` needs a GPU: refused on a CPU before any stage starts."""
        s = cfg.synth
        check_offload(s.offload, s.device.startswith("cuda") or (s.device == "auto" and torch.cuda.is_available()),
                      s.device)

    @classmethod
    def load(cls, cfg, *, teacher, device: torch.device) -> DiffusionBackend:
        from diffusers import DiffusionPipeline

        from dfkd.models import load_pretrained, resolve_model_id
        from prompts.families import pipeline_index

        s = cfg.synth
        index = pipeline_index(resolve_model_id(s.model))
        # only SD 1.x/2.x pipelines have a safety checker: say so to those alone (others would warn about the kwargs)
        safety = {} if index is not None and "safety_checker" not in index else {
            "safety_checker": None, "requires_safety_checker": False}
        pipe = load_pretrained(DiffusionPipeline, s.model, what="diffusion pipeline", dtype=DTYPES[s.dtype], **safety)
        check_pipeline(pipe, s.model, s.resolution)
        _set_scheduler(pipe, s.scheduler)
        pipe = _place(pipe, device, s.offload, s.vae_tiling, s.vae_slicing)
        pipe.set_progress_bar_config(disable=True)  # our own progress bar counts images
        _set_attention(pipe, s.attention)
        if s.compile:
            name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
            setattr(pipe, name, torch.compile(getattr(pipe, name)))
        backend = cls(pipe, s.model, steps=s.steps, guidance_scale=s.guidance_scale, resolution=s.resolution)
        if backend.uses_negative:
            with torch.no_grad():
                backend.set_negative_prompt(s.negative_prompt)
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
        """``(B, 3, R, R)`` float32 in ``[0, 1]``; ``encoding.hidden_states`` ``(B, L, h)`` are the prompts (and
        ``encoding.pooled`` ``(B, P)`` their pooled embeddings, for SDXL, SD 3 and FLUX)."""
        embeds = encoding.hidden_states.to(self.pipe.device, self.pipe.dtype)
        kwargs = {}
        if self.family != "sd":
            kwargs["pooled_prompt_embeds"] = encoding.pooled.to(embeds)
        if self.uses_negative:
            kwargs["negative_prompt_embeds"] = self.negative_embeds.expand(len(records), -1, -1).to(embeds)
            if self.family != "sd":
                kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled.expand(len(records), -1).to(embeds)
        out = self.pipe(prompt_embeds=embeds, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                        height=self.resolution, width=self.resolution, generator=image_generators(records),
                        output_type="pt", **kwargs)
        return out.images.float().clamp(0, 1)
