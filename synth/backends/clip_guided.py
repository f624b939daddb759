"""The CLIP-guided generator (VQGAN-CLIP family), driven by the teacher CLIP.

For a whole batch at once, optimise an image parameterisation so that the teacher's features of
augmented cutouts approach each prompt's text feature, with the squared spherical distance
``d(a, b) = 2 * arcsin(|a - b| / 2) ** 2`` on normalised features. Parameterisations:

* ``decoder``: the latent of a diffusers autoencoder loaded from ``synth.model`` (``VQModel`` with
  straight-through quantisation, or ``AutoencoderKL``);
* ``pixels``: raw pixels through a sigmoid;
* ``fourier``: a decorrelated (1/f-scaled) Fourier spectrum through a sigmoid;
* ``strokes``: a few soft polyline strokes over a flat background (line art, as in CLIPDraw).

The loss is summed over images (not averaged) and Adam is element-wise, so image ``i``'s trajectory
depends only on its own record and seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dfkd.errors import UserError
from dfkd.registry import Registry

from . import DTYPES, Backend, image_generators, register_backend
from .cutouts import make_cutouts


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 * arcsin(|a - b| / 2) ** 2`` for L2-normalised ``a``, ``b`` (broadcast over leading dims); in ``[0, pi^2/2]``."""
    return 2 * torch.arcsin(((a - b).norm(dim=-1) / 2).clamp(max=1.0)) ** 2


def _straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass, identity gradient (so saturated pixels can come back)."""
    return x + (x.clamp(0, 1) - x).detach()


# ---------------------------------------------------------------- parameterisations
class Parameterization(nn.Module):
    """``init(generators)`` -> parameters ``(B, ...)``; ``render(params)`` -> ``(B, 3, R, R)`` in ``[0, 1]``."""

    def init(self, generators: Sequence[torch.Generator]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, params: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


_PARAMETERIZATIONS: Registry[Callable[..., Parameterization]] = Registry(
    "parameterization", "synth.clip_guided.parameterization", "@register_parameterization")


register_parameterization = _PARAMETERIZATIONS.register  #: ``synth.clip_guided.parameterization=name``


def _randn(generators: Sequence[torch.Generator], shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]) * scale


@register_parameterization("pixels")
class PixelImage(Parameterization):
    def __init__(self, resolution: int, **_):
        super().__init__()
        self.resolution = resolution

    def init(self, generators):
        return _randn(generators, (3, self.resolution, self.resolution), 0.5)

    def render(self, params):
        return torch.sigmoid(params)


@register_parameterization("fourier")
class FourierImage(Parameterization):
    """Spectrum ``(B, 3, R, R//2+1, 2)`` scaled by 1/frequency (a decorrelated, natural-image-like basis)."""

    def __init__(self, resolution: int, decay: float = 1.0, **_):
        super().__init__()
        self.resolution = resolution
        fy = torch.fft.fftfreq(resolution).view(-1, 1)
        fx = torch.fft.rfftfreq(resolution).view(1, -1)
        scale = 1.0 / torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / resolution) ** decay
        self.register_buffer("scale", scale / scale.max())

    def init(self, generators):
        r = self.resolution
        return _randn(generators, (3, r, r // 2 + 1, 2), 0.01)

    def render(self, params):
        spectrum = torch.view_as_complex(params.float().contiguous()) * self.scale * self.resolution
        x = torch.fft.irfft2(spectrum, s=(self.resolution, self.resolution), norm="ortho")
        return torch.sigmoid(x)


@register_parameterization("strokes")
class StrokeImage(Parameterization):
    """A few soft polyline strokes over a flat background, rendered differentiably (as in CLIPDraw).

    Per image: ``strokes`` polylines of ``points`` control points (through a sigmoid into the image),
    a width and an RGB colour per stroke, and a background colour; all in one flat vector ``(B, D)``.
    A prior for line art (digits, sketches, icons) that needs no generator weights.
    """

    def __init__(self, resolution: int, strokes: int = 4, points: int = 4, **_):
        super().__init__()
        self.resolution, self.strokes, self.points = resolution, strokes, points
        lin = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy], -1).view(1, 1, 1, -1, 2))  # (1, 1, 1, R*R, 2)

    @property
    def _sizes(self) -> tuple[int, int, int, int]:
        s = self.strokes
        return s * self.points * 2, s, s * 3, 3  # points, widths, colours, background

    def init(self, generators):
        return _randn(generators, (sum(self._sizes),))

    def render(self, params):
        b, s, r = params.shape[0], self.strokes, self.resolution
        pts, widths, colours, background = params.float().split(self._sizes, dim=1)
        pts = torch.sigmoid(pts).view(b, s, self.points, 1, 2)
        a, ab = pts[:, :, :-1], pts[:, :, 1:] - pts[:, :, :-1]  # segments (B, S, P-1, 1, 2)
        t = (((self.grid - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-8)).clamp(0, 1)
        dist = (self.grid - (a + t.unsqueeze(-1) * ab)).norm(dim=-1).amin(2)  # (B, S, R*R)
        width = (0.5 + 2.5 * torch.sigmoid(widths)).unsqueeze(-1) / r  # 0.5 .. 3 px half-width
        alpha = torch.sigmoid((width - dist) * (2.0 * r)).view(b, s, 1, r, r)
        colours = torch.sigmoid(colours).view(b, s, 3, 1, 1)
        image = torch.sigmoid(background).view(b, 3, 1, 1).expand(b, 3, r, r)
        for k in range(s):  # paint strokes in order, each over what is below
            image = image * (1 - alpha[:, k]) + colours[:, k] * alpha[:, k]
        return image


def load_autoencoder(model_id: str, dtype: torch.dtype):
    """A diffusers ``VQModel`` or ``AutoencoderKL`` by id (class read from its config): an autoencoder's own folder,
    or the ``vae`` of a text-to-image pipeline (``tiny:sd``, ``stabilityai/sd-turbo``)."""
    from diffusers import AutoencoderKL, VQModel

    from dfkd.models import DIFFUSERS_HUB_NOTICE, load_pretrained, loads_offline, resolve_model_id

    path, local_only = resolve_model_id(model_id), loads_offline(model_id)
    cls_name, sub = None, {}
    for where in ({}, {"subfolder": "vae"}):  # the folder itself, else a pipeline's vae/
        try:
            with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it deprecated
                warnings.filterwarnings("ignore", message=DIFFUSERS_HUB_NOTICE)
                config = VQModel.load_config(path, local_files_only=local_only, **where)
            cls_name, sub = config.get("_class_name"), where
            break
        except (OSError, ValueError):
            continue  # load_pretrained below turns a failure of both into one clear line
    classes = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}
    if cls_name is not None and cls_name not in classes:
        raise UserError(f"synth.model '{model_id}' is a {cls_name}; the clip_guided decoder needs a VQModel or "
                        "AutoencoderKL, or a pipeline with one as its vae (or set "
                        "synth.clip_guided.parameterization=pixels or fourier)")
    return load_pretrained(classes.get(cls_name, VQModel), model_id, what="autoencoder", dtype=dtype, **sub)


@register_parameterization("decoder")
class DecoderLatent(Parameterization):
    """The latent ``(B, C, R/f, R/f)`` of a VQModel (straight-through quantised) or AutoencoderKL decoder."""

    def __init__(self, resolution: int, model_id: str, dtype: torch.dtype = torch.float32, init_scale: float = 1.0, **_):
        super().__init__()
        self.ae = load_autoencoder(model_id, dtype).eval().requires_grad_(False)
        self.factor = 2 ** (len(self.ae.config.block_out_channels) - 1)
        if resolution % self.factor:
            raise UserError(f"synth.resolution={resolution} cannot be produced by autoencoder '{model_id}' (needs a "
                            f"multiple of {self.factor}); use {max(self.factor, resolution // self.factor * self.factor)}")
        self.resolution = resolution
        self.channels = int(self.ae.config.latent_channels)
        # N(0, 1) / scaling_factor has the spread of the encoder's latents (SD's convention); init_scale < 1
        # starts nearer the latent origin (a calmer image) than a random draw of codes all over the image
        self.latent_scale = init_scale / float(getattr(self.ae.config, "scaling_factor", 1.0) or 1.0)

    def init(self, generators):
        side = self.resolution // self.factor
        return _randn(generators, (self.channels, side, side), self.latent_scale)

    def render(self, params):
        z = params.to(self.ae.dtype)
        x = self.ae.decode(z).sample  # VQModel.decode quantises with a straight-through gradient
        return _straight_through_clamp((x.float() + 1) / 2)


# ---------------------------------------------------------------- the backend
@register_backend("clip_guided")
class ClipGuidedBackend(Backend):
    """Optimise a batch of images (a :class:`Parameterization` on the teacher's device) towards their prompts'
    text features from the :class:`~prompts.teacher.ClipTeacher`; ``cfg`` is the ``synth.clip_guided`` section."""

    def __init__(self, teacher, parameterization: Parameterization, cfg, *, resolution: int, generator_id: str):
        self.teacher, self.param, self.cfg = teacher, parameterization, cfg
        self.resolution, self.generator_id = resolution, generator_id

    @classmethod
    def load(cls, cfg, *, teacher, device: torch.device) -> ClipGuidedBackend:
        s, c = cfg.synth, cfg.synth.clip_guided
        name = c.parameterization
        param = _PARAMETERIZATIONS.get(name)(resolution=s.resolution, model_id=s.model, dtype=DTYPES[s.dtype],
                                             decay=c.decay, strokes=c.strokes, points=c.stroke_points,
                                             init_scale=c.init_scale)
        gen_id = f"clip_guided:{s.model}" if name == "decoder" else f"clip_guided:{name}"
        return cls(teacher, param.to(device), c, resolution=s.resolution, generator_id=gen_id)

    @classmethod
    def preflight(cls, cfg) -> None:
        _PARAMETERIZATIONS.get(cfg.synth.clip_guided.parameterization)

    @property
    def text_encoder(self):
        return self.teacher.text

    def generate(self, records: Sequence, encoding) -> torch.Tensor:
        """``(B, 3, R, R)`` float32 in ``[0, 1]``; ``encoding.features`` ``(B, D)`` are the targets."""
        device = self.teacher.device
        target = encoding.features.detach().to(device).float().unsqueeze(1)  # (B, 1, D)
        params = self.param.init(image_generators(records)).to(device).requires_grad_(True)
        aug_gens = image_generators(records, device)
        opt = torch.optim.Adam([params], lr=self.cfg.lr)
        with torch.enable_grad():
            for _ in range(self.cfg.iterations):
                loss = self._loss(params, target, aug_gens)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            return self.param.render(params).float().clamp(0, 1)

    def _loss(self, params: torch.Tensor, target: torch.Tensor, generators) -> torch.Tensor:
        c = self.cfg
        views = make_cutouts(self.param.render(params), generators, cutouts=c.cutouts, size=self.teacher.image_size,
                             cut_pow=c.cut_pow, min_frac=c.min_size, augmentations=c.augmentations)
        feats = self.teacher.image_features(views).view(target.shape[0], c.cutouts, -1)
        return spherical_distance(feats, target).mean(1).sum()
