"""Batched augmentation on the training device: random resized crop + flip (one ``grid_sample``), colour
jitter, and optionally MixUp / CutMix between the images of the batch.

Random parameters are drawn on the CPU from a :class:`torch.Generator` seeded per (seed, process,
micro-step), so augmentations are the same on CPU and GPU and a resumed run draws exactly what an
uninterrupted run would have drawn, without any generator state in the checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import AugmentConfig


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, rank, micro_step)."""
    mixed = (seed * 1_000_003 + rank * 998_244_353 + micro_step * 2_654_435_761) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def crop_flip_resize(images: torch.Tensor, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, size, size)``: random resized crop and horizontal flip."""
    n = images.shape[0]
    # per image: crop width/height as fractions of the side, and centres in [-1, 1] coordinates
    w, h, cx, cy = torch.ones(n), torch.ones(n), torch.zeros(n), torch.zeros(n)
    if cfg.random_resized_crop:
        lo, hi = cfg.scale
        area = lo + (hi - lo) * torch.rand(n, generator=gen)
        ratio = (math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=gen)).exp()
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (1 - w) * (2 * torch.rand(n, generator=gen) - 1)
        cy = (1 - h) * (2 * torch.rand(n, generator=gen) - 1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` luma."""
    r, g, b = images.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors uniform in ``[1 - strength, 1 + strength]``; output in [0, 1]."""
    n = images.shape[0]
    factors = 1 + strength * (2 * torch.rand(3, n, 1, 1, 1, generator=gen) - 1)
    bright, contrast, sat = factors.to(device=images.device, dtype=images.dtype)
    images = images * bright
    mean = _gray(images).mean(dim=(2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    gray = _gray(images)
    images = (images - gray) * sat + gray
    return images.clamp(0, 1)


def _beta(alpha: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha), reproducible from ``gen``."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def mix(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """MixUp or CutMix of each image with a random partner in the batch (per-image lambda)."""
    n = x.shape[0]
    if n < 2 or (cfg.mixup <= 0 and cfg.cutmix <= 0):
        return x
    perm = torch.randperm(n, generator=gen).to(x.device)
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or bool(torch.rand(1, generator=gen) < 0.5))
    lam = _beta(cfg.cutmix if use_cutmix else cfg.mixup, n, gen)
    if not use_cutmix:
        lam = lam.to(x).view(-1, 1, 1, 1)
        return lam * x + (1 - lam) * x[perm]
    h, w = x.shape[-2:]
    side = (1 - lam).sqrt()  # the pasted box covers 1 - lambda of the area
    cy, cx = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    ys = torch.arange(h).view(1, -1, 1) / h
    xs = torch.arange(w).view(1, 1, -1) / w
    inside = ((ys - cy.view(-1, 1, 1)).abs() < side.view(-1, 1, 1) / 2) & (
        (xs - cx.view(-1, 1, 1)).abs() < side.view(-1, 1, 1) / 2)
    return torch.where(inside.unsqueeze(1).to(x.device), x[perm], x)


def augment(images: torch.Tensor, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 (or float in [0, 1]) on any device -> ``(B, 3, size, size)`` float32 in [0, 1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = crop_flip_resize(x, size, cfg, gen)
    if cfg.color_jitter > 0:
        x = color_jitter(x, cfg.color_jitter, gen)
    return mix(x, cfg, gen)


def center_square_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Shorter side of an ``h x w`` image to ``size``, centre crop: ``(resized h, resized w, top, left)``."""
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation view: ``(B, 3, H, W)`` uint8/float -> ``(B, 3, size, size)`` float in [0, 1] (shorter side to size, centre crop)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    h, w = x.shape[-2:]
    nh, nw, top, left = center_square_box(h, w, size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return x[..., top:top + size, left:left + size].clamp(0, 1)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> student input; ``mean``/``std`` are ``(1, 3, 1, 1)``."""
    return (x - mean) / std
