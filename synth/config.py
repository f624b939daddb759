"""Config section owned by ``synth``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from dfkd.configtools import at_least, check
from dfkd.stage import Experiment
from prompts.config import PromptsConfig, TeacherConfig

#: the cutout augmentations synth.backends.cutouts implements
AUGMENTATIONS = ("affine", "perspective", "color_jitter", "noise")


@dataclass
class ClipGuidedConfig:
    """The VQGAN-CLIP family (docs/method.md section 4)."""

    #: a registered parameterisation: decoder (the latent of synth.model), pixels, fourier, strokes, or your own
    parameterization: str = "decoder"
    iterations: int = 300
    lr: float = 0.1
    cutouts: int = 32
    cut_pow: float = 1.0  #: cutout side = min_size + (1 - min_size) * u ** cut_pow; < 1 favours large cutouts
    min_size: float = 0.25  #: the smallest cutout, as a fraction of the image side
    decay: float = 1.0  #: fourier: amplitudes scale as 1 / frequency ** decay; larger = smoother images
    init_scale: float = 1.0  #: decoder: the random start latent's std, as a fraction of the encoder's latent std
    strokes: int = 4  #: strokes: polylines per image
    stroke_points: int = 4  #: strokes: control points per polyline
    augmentations: list[str] = field(default_factory=lambda: list(AUGMENTATIONS))

    def validate(self, prefix: str) -> None:
        at_least(self, prefix, iterations=1, cutouts=1, decay=0, strokes=1)
        for name in ("lr", "cut_pow", "init_scale"):
            check(getattr(self, name) > 0, prefix + name, "must be positive")
        check(self.stroke_points >= 2, prefix + "stroke_points", "must be at least 2 (a stroke needs two ends)")
        check(0 < self.min_size <= 1, prefix + "min_size", "must be a fraction of the image side in (0, 1]")
        unknown = [a for a in self.augmentations if a not in AUGMENTATIONS]
        check(not unknown, prefix + "augmentations", f"has unknown {unknown}; valid: {', '.join(AUGMENTATIONS)}")


@dataclass
class FilterConfig:
    """Optional teacher-confidence filtering (off by default)."""

    enabled: bool = False
    threshold: float = 0.0  #: minimum teacher probability of the intended class
    mode: Literal["drop", "regenerate"] = "regenerate"
    max_tries: int = 3

    def validate(self, prefix: str) -> None:
        check(0.0 <= self.threshold <= 1.0, prefix + "threshold", "must be a probability in [0, 1]")
        at_least(self, prefix, max_tries=1)


@dataclass
class SynthConfig:
    """Synthesis of the surrogate image set."""

    backend: str = "diffusion"  #: diffusion or clip_guided (or a registered backend)
    model: str = "stabilityai/sd-turbo"  #: diffusion pipeline id, or the autoencoder (VQModel/AutoencoderKL) id for clip_guided
    images_per_class: int = 100
    max_images: int = 10_000_000  #: a run that plans more images (classes x images_per_class) is refused; raise it
    batch_size: int = 16
    resolution: int = 512  #: generation resolution (px)
    store_resolution: int = 256  #: stored resolution (px); images are resized before encoding
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 95
    steps: int = 1
    guidance_scale: float = 0.0
    negative_prompt: str = ""
    scheduler: str | None = None  #: a diffusers scheduler class name, e.g. EulerAncestralDiscreteScheduler
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  #: auto, cpu, cuda, cuda:1, mps
    attention: Literal["sdpa", "xformers"] = "sdpa"
    #: none: the whole pipeline on synth.device; model: diffusers' enable_model_cpu_offload (each component moves to
    #: the GPU while it runs: SDXL/FLUX on a small GPU); sequential: enable_sequential_cpu_offload (least memory, slow)
    offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False  #: decode in tiles (large resolutions at low memory)
    vae_slicing: bool = False  #: decode one image of the batch at a time
    compile: bool = False
    shard_size: int = 256  #: images per parquet shard (the unit of resume)
    writer_threads: int = 2
    overwrite: bool = False  #: start over when the output folder holds a dataset from a different config
    clip_guided: ClipGuidedConfig = field(default_factory=ClipGuidedConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    diagnostics_max_per_class: int = 500  #: images per class whose teacher features enter the diversity scores
    preview_per_class: int = 8  #: images per class (a row each) in the preview grid
    progress: bool = True  #: show the images/s progress bar
    push_to_hub: bool = False
    hub_repo: str | None = None
    hub_private: bool = False

    def validate(self, prefix: str) -> None:
        check(bool(self.backend), prefix + "backend", "must name a backend (diffusion or clip_guided)")
        at_least(self, prefix, images_per_class=1, max_images=1, batch_size=1, resolution=8, store_resolution=8, steps=1,
                 guidance_scale=0, shard_size=1, writer_threads=1, diagnostics_max_per_class=2, preview_per_class=1)
        check(1 <= self.jpeg_quality <= 100, prefix + "jpeg_quality", "must be in 1..100")
        check(self.resolution <= 8192, prefix + "resolution", "must be at most 8192 (pixels per side)")
        check(not self.push_to_hub or bool(self.hub_repo), prefix + "hub_repo",
              "must be set (user/name) when synth.push_to_hub=true")


class SynthExperiment(Experiment, Protocol):
    """What the synth stage reads of an experiment: its ``synth`` section and the ``prompts`` and ``teacher``
    sections of the stage below it."""

    teacher: TeacherConfig
    prompts: PromptsConfig
    synth: SynthConfig
