"""The generator priors of the digits kit, trained offline on renderings of real MNIST *training* digits.

* ``vqgan``: a diffusers ``VQModel`` (f=4: 32 px <-> 8x8 codes), trained without labels or captions on
  renderings in the teacher's styles plus crops of the training photos and textures (L1 + L2
  reconstruction, codebook and commitment terms, dead codes restarted from encoder outputs). The prior
  of the paper's VQGAN-CLIP pipeline: ``synth.backend=clip_guided`` with ``parameterization=decoder``.
* ``vae``: a diffusers ``AutoencoderKL`` (f=4, 4 latent channels), trained the same way with a small KL
  term: the latent space of ``sd``.
* ``sd``: a text-to-image latent diffusion model in the ``StableDiffusionPipeline`` layout
  (``AutoencoderKL`` + ``UNet2DConditionModel`` + CLIP tokenizer + scheduler), conditioned on the
  frozen text tower of the digits teacher (``digits:clip``) as Stable Diffusion 1.x is conditioned on
  a CLIP text tower. Trained on captioned renderings (the teacher's caption distribution) with caption
  dropout, so classifier-free guidance works; sampled with a multistep DPM-Solver in a few steps.

No part of the kit sees MNIST *test* digits, optdigits or the evaluation-only photos: every image is
rendered from MNIST *training* digits over :data:`data.TRAIN_PHOTOS`, and the last
:data:`HELD_OUT` training digits are kept back to measure reconstruction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data
from .training import optimizer_step, warmup_cosine

HELD_OUT = 1000  #: the last MNIST *training* digits: never trained on, used to measure reconstruction


# ------------------------------------------------------------------------------------------ training data
@dataclass
class Pool:
    """Rendered training images ``(N, 3, 32, 32)`` uint8 with one web-like caption each."""

    images: torch.Tensor
    captions: list[str]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 32, 32)`` float in ``[-1, 1]`` (diffusers autoencoders' range)."""
        return self.images[idx].float().div(127.5).sub(1)


def render_pool(n: int, seed: int, *, photo_fraction: float = 0.0, held_out: bool = False,
                progress: bool = True) -> Pool:
    """``n`` jittered renderings of MNIST *training* digits in random teacher styles, with captions.

    ``photo_fraction`` of the images are plain crops of the training photos and textures (captioned
    ""): the autoencoders should reconstruct textures too. ``held_out`` draws from the last
    :data:`HELD_OUT` training digits instead of the rest.
    """
    images, labels = data.load_mnist("train")
    lo, hi = (len(images) - HELD_OUT, len(images)) if held_out else (0, len(images) - HELD_OUT)
    gen = torch.Generator().manual_seed(seed)
    photos = data.photo_bank(data.TRAIN_PHOTOS)
    out, caps = [], []
    chunk = 512
    for start in tqdm(range(0, n, chunk), desc="rendering digits", disable=not progress, mininterval=5):
        m = min(chunk, n - start)
        idx = torch.randint(lo, hi, (m,), generator=gen).numpy()
        r = data.random_style_batch(data.glyphs_from_mnist(images[idx]), gen, photos)
        x = r.images
        batch_caps = [data.caption(int(labels[j]), r, i, gen)[0] for i, j in enumerate(idx)]
        k = round(photo_fraction * m)
        if k:
            x[:k] = data.photo_crops(k, gen, photos)
            batch_caps[:k] = [""] * k
        caps += batch_caps
        out.append((x * 255).round().to(torch.uint8))
    return Pool(torch.cat(out), caps)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in ``[-1, 1]``, computed on ``[0, 1]``."""
    mse = ((x.clamp(-1, 1) - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def _block_types(n: int) -> dict:
    return {"down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n}


# ------------------------------------------------------------------------------------------ autoencoders
@dataclass
class AutoencoderRecipe:
    kind: str = "vq"  #: vq (VQModel) or kl (AutoencoderKL)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    channels: tuple[int, ...] = (32, 64, 64)  #: f = 2 ** (len - 1)
    latent_channels: int = 4
    codebook: int = 256  #: vq only
    kl_weight: float = 1e-5  #: kl only (on the KL summed over latent dims)
    pool: int = 20000
    photo_fraction: float = 0.2
    seed: int = 0


def build_autoencoder(r: AutoencoderRecipe):
    from diffusers import AutoencoderKL, VQModel

    common = {"block_out_channels": tuple(r.channels), "layers_per_block": 1, "latent_channels": r.latent_channels,
              "norm_num_groups": 16, "sample_size": data.SIZE, **_block_types(len(r.channels))}
    torch.manual_seed(r.seed)
    if r.kind == "vq":
        return VQModel(num_vq_embeddings=r.codebook, **common)
    return AutoencoderKL(**common)


def _vq_forward(model, x: torch.Tensor):
    """Reconstruction, codebook + commitment loss and code indices of a ``VQModel`` on ``x``."""
    h = model.encode(x).latents
    quant, vq_loss, (_, _, idx) = model.quantize(h)
    return model.decoder(model.post_quant_conv(quant)), vq_loss, idx.view(-1), h


def _kl_forward(model, x: torch.Tensor, gen: torch.Generator):
    post = model.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    return model.decode(z).sample, post.kl().mean(), post.mean


def train_autoencoder(r: AutoencoderRecipe, out: Path, progress: bool = True) -> dict:
    """Train a ``VQModel`` or ``AutoencoderKL`` per ``r``; save it (``save_pretrained``) to ``out``."""
    t0 = time.perf_counter()
    pool = render_pool(r.pool, r.seed, photo_fraction=r.photo_fraction, progress=progress)
    held = render_pool(512, r.seed + 1, held_out=True, progress=False)
    model = build_autoencoder(r).train()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(50, r.steps))
    gen = torch.Generator().manual_seed(r.seed)
    usage = torch.zeros(r.codebook)
    losses: list[float] = []
    bar = tqdm(range(r.steps), desc=f"digits {'vqgan' if r.kind == 'vq' else 'vae'}", disable=not progress,
               mininterval=5)
    for step in bar:
        x = pool.batch(torch.randint(len(pool.images), (r.batch_size,), generator=gen))
        if r.kind == "vq":
            rec, reg, idx, h = _vq_forward(model, x)
            usage += torch.bincount(idx, minlength=r.codebook).float()
        else:
            rec, kl, _ = _kl_forward(model, x, gen)
            reg = r.kl_weight * kl
        losses.append(optimizer_step(F.l1_loss(rec, x) + F.mse_loss(rec, x) + reg, model.parameters(), opt, sched))
        if r.kind == "vq" and (step + 1) % 100 == 0 and step < r.steps * 0.8:
            _restart_dead_codes(model, usage, h, gen)
            usage.zero_()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
    model.eval()
    summary = {"first_loss": float(np.mean(losses[:20])), "last_loss": float(np.mean(losses[-20:])),
               "steps": r.steps, "batch_size": r.batch_size}
    with torch.no_grad():
        x = held.batch(torch.arange(len(held.images)))
        if r.kind == "vq":
            rec, _, idx, h = _vq_forward(model, x)
            counts = torch.bincount(idx, minlength=r.codebook).float()
            p = counts / counts.sum()
            summary["codebook_used"] = int((counts > 0).sum())
            summary["codebook_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
            latents = h
        else:
            rec, _, latents = _kl_forward(model, x, gen)
        summary["heldout_psnr_db"] = psnr(rec, x)
        # SD's convention: latents / scaling_factor has unit std, so N(0, 1) / scaling_factor is "a latent"
        model.register_to_config(scaling_factor=float(1.0 / latents.std()))
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["seconds"] = time.perf_counter() - t0
    model.save_pretrained(out)
    return summary


@torch.no_grad()
def _restart_dead_codes(model, usage: torch.Tensor, h: torch.Tensor, gen: torch.Generator) -> None:
    """Codes no input chose in the last window restart at random encoder outputs (they would stay dead)."""
    dead = torch.flatten(torch.nonzero(usage == 0))
    if len(dead) == 0:
        return
    z = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    pick = torch.randint(len(z), (len(dead),), generator=gen)
    model.quantize.embedding.weight[dead] = z[pick] + 0.01 * torch.randn(len(dead), z.shape[1], generator=gen)


# ------------------------------------------------------------------------------------------ text-to-image
@dataclass
class DiffusionRecipe:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    channels: tuple[int, ...] = (64, 128)
    min_snr_gamma: float = 5.0  #: Min-SNR loss weighting (Hang et al. 2023): faster convergence
    heads: int = 4
    pool: int = 30000
    caption_dropout: float = 0.1
    train_timesteps: int = 1000
    seed: int = 0


def build_unet(r: DiffusionRecipe, latent_size: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(r.channels)
    torch.manual_seed(r.seed)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=tuple(r.channels),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cross_attention_dim, attention_head_dim=r.heads, norm_num_groups=32,
    )


def text_tower(teacher_dir: Path):
    """The teacher's text tower as a ``CLIPTextModel`` (SD's text-encoder class) and its tokenizer."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(teacher_dir)
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    return text.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(teacher_dir)


@torch.no_grad()
def encode_captions(text, tok, captions: list[str]) -> torch.Tensor:
    """``(B, L, h)`` last hidden states, exactly as ``StyleTextEncoder.encode_text`` (and SD) compute them."""
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return text(input_ids=ids).last_hidden_state


def train_diffusion(r: DiffusionRecipe, out: Path, teacher_dir: Path, vae_dir: Path, progress: bool = True) -> dict:
    """Train the UNet on ``vae`` latents of captioned renderings; save the whole pipeline to ``out``."""
    from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    text, tok = text_tower(teacher_dir)
    pool = render_pool(r.pool, r.seed + 7, progress=progress)
    sf = float(vae.config.scaling_factor)
    with torch.no_grad():  # the latent distribution of every pool image, once
        stats = [vae.encode(pool.batch(torch.arange(i, min(i + 1024, len(pool.images))))).latent_dist
                 for i in range(0, len(pool.images), 1024)]
        mean = torch.cat([d.mean for d in stats]) * sf
        std = torch.cat([d.std for d in stats]) * sf
    latent_size = mean.shape[-1]
    unet = build_unet(r, latent_size, text.config.hidden_size).train()
    noise_sched = DDPMScheduler(num_train_timesteps=r.train_timesteps, beta_schedule="squaredcos_cap_v2",
                                clip_sample=False, steps_offset=1)
    opt = torch.optim.AdamW(unet.parameters(), lr=r.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(100, r.steps))
    gen = torch.Generator().manual_seed(r.seed)
    empty = encode_captions(text, tok, [""])
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    weight = snr.clamp(max=r.min_snr_gamma) / snr  # epsilon-prediction form of Min-SNR-gamma
    losses: list[float] = []
    bar = tqdm(range(r.steps), desc="digits sd (unet)", disable=not progress, mininterval=5)
    for _ in bar:
        idx = torch.randint(len(pool.captions), (r.batch_size,), generator=gen)
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        cond = encode_captions(text, tok, [pool.captions[i] for i in idx.tolist()])
        drop = torch.rand(r.batch_size, generator=gen) < r.caption_dropout
        cond = torch.where(drop.view(-1, 1, 1), empty.expand_as(cond), cond)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, r.train_timesteps, (r.batch_size,), generator=gen)
        pred = unet(noise_sched.add_noise(z0, noise, t), t, encoder_hidden_states=cond).sample
        loss = (F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3)) * weight[t]).mean()
        losses.append(optimizer_step(loss, unet.parameters(), opt, sched))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    tok.model_max_length = int(text.config.max_position_embeddings)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet.eval(),
        # "leading" spacing with steps_offset=1 (SD 1.x's) starts at t=901, not 999: the cosine schedule's last
        # alpha_bar is ~1e-9, where predicting x0 from epsilon divides by ~0 and the sample explodes
        scheduler=DPMSolverMultistepScheduler.from_config(noise_sched.config, timestep_spacing="leading"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return {"first_loss": float(np.mean(losses[:50])), "last_loss": float(np.mean(losses[-50:])), "steps": r.steps,
            "batch_size": r.batch_size, "parameters_unet": sum(p.numel() for p in unet.parameters()),
            "seconds": time.perf_counter() - t0}
