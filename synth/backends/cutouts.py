"""Batched random cutouts with augmentations for CLIP guidance, in plain torch.

Every cutout is one projective warp (crop + affine + perspective folded into a 3x3 homography,
applied with a single ``grid_sample``), then colour jitter and Gaussian noise. Random numbers for
image ``i`` come from generator ``i`` only, so an image's augmentations never depend on its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from synth.config import AUGMENTATIONS

_NUM_UNIFORMS = 11  # per cutout: size, cx, cy, angle, shear, px, py, brightness, contrast, saturation, noise


def _uniforms(generators: Sequence[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """``(B, n, 11)`` uniforms in [0, 1), image ``i``'s from ``generators[i]``."""
    return torch.stack([torch.rand(n, _NUM_UNIFORMS, generator=g, device=g.device) for g in generators]).to(device)


def _homographies(u: torch.Tensor, augs: set[str], cut_pow: float, min_frac: float) -> torch.Tensor:
    """``(N, 3, 3)`` maps from output coords in [-1, 1] to input coords, from ``(N, 11)`` uniforms."""
    size = min_frac + (1 - min_frac) * u[:, 0] ** cut_pow  # fraction of the side
    cx, cy = (2 * u[:, 1] - 1) * (1 - size), (2 * u[:, 2] - 1) * (1 - size)
    angle = (2 * u[:, 3] - 1) * math.radians(15) if "affine" in augs else torch.zeros_like(size)
    shear = (2 * u[:, 4] - 1) * 0.15 if "affine" in augs else torch.zeros_like(size)
    persp = 0.25 if "perspective" in augs else 0.0
    px, py = (2 * u[:, 5] - 1) * persp, (2 * u[:, 6] - 1) * persp
    cos, sin = torch.cos(angle), torch.sin(angle)
    h = torch.zeros(u.shape[0], 3, 3, device=u.device, dtype=u.dtype)
    h[:, 0, 0], h[:, 0, 1], h[:, 0, 2] = size * cos, size * (shear * cos - sin), cx
    h[:, 1, 0], h[:, 1, 1], h[:, 1, 2] = size * sin, size * (shear * sin + cos), cy
    h[:, 2, 0], h[:, 2, 1], h[:, 2, 2] = px, py, 1.0
    return h


def _warp(images: torch.Tensor, h: torch.Tensor, n: int, out: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B * n, 3, out, out)`` sampled through homographies ``h`` ``(B * n, 3, 3)``."""
    lin = torch.linspace(-1 + 1 / out, 1 - 1 / out, out, device=images.device, dtype=h.dtype)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, -1, 3)  # (1, out*out, 3)
    pts = base @ h.transpose(1, 2)  # (N, out*out, 3)
    grid = (pts[..., :2] / pts[..., 2:].clamp_min(1e-3)).view(-1, out, out, 2)
    src = images.repeat_interleave(n, dim=0)
    return F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def _color_jitter(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation jitter per cutout; ``u`` ``(N, 3)`` uniforms."""
    b, c, s = ((2 * u - 1) * torch.tensor([0.1, 0.1, 0.1], device=u.device)).to(x.dtype).unbind(-1)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * (1 + s).view(-1, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (1 + c).view(-1, 1, 1, 1) + mean + b.view(-1, 1, 1, 1)


def make_cutouts(images: torch.Tensor, generators: Sequence[torch.Generator], *, cutouts: int, size: int,
                 cut_pow: float = 1.0, augmentations: Sequence[str] = AUGMENTATIONS,
                 min_frac: float = 0.25, noise_std: float = 0.1) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B * cutouts, 3, size, size)`` augmented views (differentiable).

    Views ``i * cutouts ... (i + 1) * cutouts - 1`` belong to image ``i``. Values may leave ``[0, 1]``
    slightly (jitter, noise); CLIP normalises them anyway.
    """
    augs = set(augmentations)
    unknown = augs - set(AUGMENTATIONS)
    if unknown:
        from dfkd.errors import UserError

        raise UserError(f"unknown augmentation(s) {sorted(unknown)} in synth.clip_guided.augmentations; "
                        f"valid: {', '.join(AUGMENTATIONS)}")
    u = _uniforms(generators, cutouts, images.device).flatten(0, 1)  # (B*n, 11)
    x = _warp(images, _homographies(u.float(), augs, cut_pow, min_frac), cutouts, size)
    if "color_jitter" in augs:
        x = _color_jitter(x, u[:, 7:10])
    if "noise" in augs:
        noise = torch.cat([torch.randn(cutouts, 3, size, size, generator=g, device=g.device) for g in generators])
        x = x + noise.to(x) * (u[:, 10] * noise_std).view(-1, 1, 1, 1).to(x)
    return x
