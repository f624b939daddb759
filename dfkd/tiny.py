"""Tiny, deterministic, offline models that load through the real ``from_pretrained`` path.

``dfkd make-tiny DIR`` (or :func:`build_all`) writes one folder per model:

* ``clip/``  a tiny ``CLIPModel`` + ``CLIPProcessor`` (text and image towers of width 32, image 32 px)
* ``sd/``    a tiny Stable-Diffusion pipeline (UNet, VAE, CLIP text encoder, DDIM scheduler), 32 px
* ``sdxl/``, ``sd3/``, ``flux/`` tiny pipelines with the text encoders of SDXL (two CLIP), SD 3 (two CLIP and
  T5) and FLUX.1 (CLIP and T5), 32 px; their T5 tokenizer is built offline (:func:`make_t5_tokenizer`)
* ``vqgan/`` a tiny ``VQModel`` (f=2, 32 px)
* ``vae/``   a tiny ``AutoencoderKL`` (f=2, 32 px)

Their tokenizers use the **real** OpenAI CLIP BPE vocabulary (49,408 tokens, from the
``open_clip_torch`` wheel), so style words tokenize exactly as in real CLIP and SD. Weights are
random but built from a fixed seed: building twice gives bit-identical files.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .errors import UserError

#: bump when a builder changes, so cached tiny models are rebuilt
TINY_VERSION = "1"
SEED = 0
TEXT_WIDTH = 32
IMAGE_SIZE = 32
#: the tiny autoencoders' shape (SD's VAE, the VQGAN and the lone VAE): two blocks of 16 and 32 channels, f=2
_AUTOENCODER = {
    "block_out_channels": (16, 32), "latent_channels": 4, "norm_num_groups": 16, "sample_size": IMAGE_SIZE,
    "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
}


def clip_bpe_path() -> Path:
    """The real CLIP BPE merges file shipped in the ``open_clip_torch`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the real CLIP vocabulary needs open_clip_torch; install it with `pip install open-clip-torch`")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise UserError(f"open_clip_torch is installed but '{path}' is missing; reinstall open-clip-torch")
    return path


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges identical to ``openai/clip-vit-base-patch32``'s tokenizer."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP byte map: fixes the ids

    with gzip.open(clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def make_clip_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` with the real OpenAI CLIP vocabulary (ids equal real CLIP's)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=model_max_length)


def _text_config_kwargs() -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def build_clip(out: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(SEED)
    config = CLIPConfig(
        text_config=_text_config_kwargs(),
        vision_config={
            "hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": IMAGE_SIZE, "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=make_clip_tokenizer()).save_pretrained(out)


def build_sd(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**_AUTOENCODER)
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config_kwargs())).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=make_clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def make_t5_tokenizer(model_max_length: int = 32):
    """A T5 tokenizer (sentencepiece-style Unigram: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) built offline with the
    ``tokenizers`` library: every whole word of the real CLIP vocabulary is a piece (so style words and class names
    are single tokens, as in real T5 for common words), single characters spell out the rest."""
    from transformers import T5Tokenizer

    vocab, _ = clip_vocab_and_merges()
    words = sorted({t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha()})
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -5.0 - 0.001 * len(w)) for w in words] + [(c, -12.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(d_model: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()


def _clip_text(projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if projection:
        return CLIPTextModelWithProjection(CLIPTextConfig(**_text_config_kwargs(), projection_dim=TEXT_WIDTH)).eval()
    return CLIPTextModel(CLIPTextConfig(**_text_config_kwargs())).eval()


def build_sdxl(out: Path) -> None:
    """SDXL's shape: CLIP-L and CLIP-G (with projection) text encoders, penultimate states side by side (64 wide),
    a UNet with SDXL's pooled-text + size conditioning (``text_time``), an Euler scheduler."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(SEED)
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + TEXT_WIDTH,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**_AUTOENCODER)
    torch.manual_seed(SEED + 2)
    text_encoder = _clip_text(projection=False)
    torch.manual_seed(SEED + 3)
    text_encoder_2 = _clip_text(projection=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=make_clip_tokenizer(),
        tokenizer_2=make_clip_tokenizer(), unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    ).save_pretrained(out)


def build_sd3(out: Path) -> None:
    """SD 3's shape: two CLIP encoders with projection (32 + 32, padded to T5's 64) and a T5 encoder (64 wide,
    32 tokens), an MMDiT transformer, flow-matching Euler scheduler."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=2 * TEXT_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_WIDTH, pos_embed_max_size=IMAGE_SIZE // 2,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**_AUTOENCODER, shift_factor=0.0)
    torch.manual_seed(SEED + 2)
    text_encoder = _clip_text(projection=True)
    torch.manual_seed(SEED + 3)
    text_encoder_2 = _clip_text(projection=True)
    t5_tok = make_t5_tokenizer()
    torch.manual_seed(SEED + 4)
    text_encoder_3 = _t5_encoder(2 * TEXT_WIDTH, len(t5_tok))
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=make_clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=make_clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=t5_tok,
    ).save_pretrained(out)


def build_flux(out: Path) -> None:
    """FLUX.1's shape: CLIP-L (pooled, 32) and T5 (32 wide, 32 tokens), a tiny double- and single-stream
    transformer over 2x2-packed latents, flow-matching Euler scheduler (schnell: no guidance embedding)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * _AUTOENCODER["latent_channels"], num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**_AUTOENCODER, shift_factor=0.0)
    torch.manual_seed(SEED + 2)
    text_encoder = _clip_text(projection=False)
    t5_tok = make_t5_tokenizer()
    torch.manual_seed(SEED + 3)
    text_encoder_2 = _t5_encoder(TEXT_WIDTH, len(t5_tok))
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer,
    ).save_pretrained(out)


def build_vqgan(out: Path) -> None:
    import torch
    from diffusers import VQModel

    torch.manual_seed(SEED)
    VQModel(**_AUTOENCODER, num_vq_embeddings=64).save_pretrained(out)


def build_vae(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    AutoencoderKL(**_AUTOENCODER).save_pretrained(out)


TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "clip": build_clip,
    "sd": build_sd,
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "flux": build_flux,
    "vqgan": build_vqgan,
    "vae": build_vae,
}


def build_tiny(name: str, out: str | Path) -> Path:
    """Build tiny model ``name`` into ``out`` (atomically, checked to load: :func:`dfkd.modelcache.build_into`)."""
    out = Path(out)
    if name not in TINY_BUILDERS:
        raise UserError(f"unknown tiny model '{name}'; valid: {', '.join(TINY_BUILDERS)}")
    from .modelcache import build_into

    return build_into(out, lambda tmp: _build_with_marker(name, tmp), LOADS_WITH[name])


def build_all(out: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build every tiny model (or ``names``) into ``out/<name>``; returns name -> folder."""
    return {n: build_tiny(n, Path(out) / n) for n in (names or list(TINY_BUILDERS))}


#: the classes each tiny folder must load with before it counts as built
LOADS_WITH = {
    "clip": ("transformers.CLIPModel", "transformers.CLIPProcessor"),
    "sd": ("diffusers.StableDiffusionPipeline",),
    "sdxl": ("diffusers.StableDiffusionXLPipeline",),
    "sd3": ("diffusers.StableDiffusion3Pipeline",),
    "flux": ("diffusers.FluxPipeline",),
    "vqgan": ("diffusers.VQModel",),
    "vae": ("diffusers.AutoencoderKL",),
}


def _build_with_marker(name: str, out: Path) -> None:
    TINY_BUILDERS[name](out)
    (out / "dfkd_tiny.json").write_text(json.dumps({"name": name, "version": TINY_VERSION, "seed": SEED}))


def ensure_tiny(name: str, cache: str | Path) -> Path:
    """The cached folder of tiny model ``name``, built once per cache location, complete and loadable (safe when
    processes race, on one machine or several: see :mod:`dfkd.modelcache`)."""
    from .modelcache import ensure_folder

    target = Path(cache) / f"v{TINY_VERSION}" / name
    return ensure_folder(target, lambda tmp: _build_with_marker(name, tmp), LOADS_WITH[name],
                         rebuild_in=("dfkd.tiny", "ensure_tiny", (name, str(cache))), legacy_marker="dfkd_tiny.json")
