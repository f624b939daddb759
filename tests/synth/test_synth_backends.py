"""Both generator backends on the tiny models: shapes, ranges, determinism, batch independence."""

from __future__ import annotations

import pytest
import torch
from synth_helpers import CLIP_GUIDED, fast_config, load_backend, records_and_encoding

from dfkd.errors import UserError

KEYS = [(0, 0), (1, 0), (2, 0), (0, 1)]


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory, teacher):
    cfg = fast_config(tmp_path_factory.mktemp("diff"))
    return cfg, load_backend(cfg, teacher)


@pytest.mark.parametrize("method", ["plain", "handcrafted", "mix", "random"])
def test_diffusion_every_method_gives_images_in_range(diffusion, method):
    cfg, backend = diffusion
    cfg.prompts.method = method
    records, enc = records_and_encoding(cfg, backend, KEYS)
    images = backend.generate(records, enc)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0


def test_diffusion_contrastive_after_learning(tmp_path, teacher):
    from prompts.cli import learn

    cfg = fast_config(tmp_path, "prompts.method=contrastive", "prompts.contrastive.steps=2",
                      "prompts.contrastive.num_styles=4", "prompts.contrastive.class_batch=3")
    assert learn(cfg, None) == 0
    backend = load_backend(cfg, teacher)
    records, enc = records_and_encoding(cfg, backend, KEYS)
    assert {r.style_id for r in records} <= set(range(4))
    assert backend.generate(records, enc).shape == (4, 3, 32, 32)


def test_diffusion_fixed_seed_is_bit_exact_and_batch_independent(diffusion):
    cfg, backend = diffusion
    cfg.prompts.method = "mix"
    records, enc = records_and_encoding(cfg, backend, KEYS)
    a, b = backend.generate(records, enc), backend.generate(records, enc)
    assert torch.equal(a, b)  # same prompts and seeds: bit for bit on CPU
    one, enc1 = records_and_encoding(cfg, backend, [KEYS[2]])
    alone = backend.generate(one, enc1)
    # alone vs inside a batch: same noise (per-image generator), equal up to float rounding of batched kernels
    assert (alone[0] - a[2]).abs().max() < 1e-4
    assert ((alone[0] * 255).round() - (a[2] * 255).round()).abs().max() <= 1


def _hidden_states_by_hand(pipe, texts):
    """``(B, 77, h)`` last hidden states of the pipeline's own text encoder on ``texts``."""
    ids = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


def _pipeline_by_hand(cfg, records, texts, negative=None, scheduler=None):
    """The images a freshly loaded tiny:sd StableDiffusionPipeline makes from the hidden states of ``texts``
    (and of the ``negative`` prompt) under the records' seeds."""
    from fixtures import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    kwargs = {} if negative is None else {"negative_prompt_embeds": _hidden_states_by_hand(pipe, [negative] * len(texts))}
    s = cfg.synth
    with torch.no_grad():
        out = pipe(prompt_embeds=_hidden_states_by_hand(pipe, texts), num_inference_steps=s.steps,
                   guidance_scale=s.guidance_scale, height=s.resolution, width=s.resolution, output_type="pt",
                   generator=[torch.Generator().manual_seed(int(r.seed)) for r in records], **kwargs)
    return out.images.float().clamp(0, 1)


def _per_image_gap(a, b):
    """Largest pixel difference per image; the tiny UNet's text conditioning moves pixels by ~0.01, float
    rounding by < 1e-4."""
    return (a - b).flatten(1).abs().amax(1)


def test_diffusion_images_follow_the_prompt_embeddings(diffusion):
    """Two prompts under one seed: the backend's images equal the pipeline run by hand on the prompts' own
    text-encoder hidden states; the prompts give different images, and zeroed embeddings other images again."""
    from dataclasses import replace

    from prompts.encoder import TextEncoding

    cfg, backend = diffusion
    cfg.prompts.method = "plain"
    records, enc = records_and_encoding(cfg, backend, [(0, 0), (1, 0)])
    records = [replace(r, seed=records[0].seed) for r in records]  # same noise, different prompts
    images = backend.generate(records, enc)
    expected = _pipeline_by_hand(cfg, records, [r.text for r in records])
    assert (images - expected).abs().max() < 1e-4
    assert _per_image_gap(images[:1], images[1:]).item() > 1e-3
    zeroed = backend.generate(records, TextEncoding(torch.zeros_like(enc.hidden_states), enc.features))
    assert _per_image_gap(zeroed, images).min() > 1e-3


def test_diffusion_guidance_uses_negative_embeddings(tmp_path, teacher):
    """guidance_scale > 1: the images are the pipeline's by hand with the negative prompt's hidden states, and
    another negative prompt changes them."""
    from diffusers import EulerAncestralDiscreteScheduler

    cfg = fast_config(tmp_path, "synth.guidance_scale=3.0", "synth.negative_prompt=blurry",
                      "synth.scheduler=EulerAncestralDiscreteScheduler", "prompts.method=plain")
    backend = load_backend(cfg, teacher)
    assert backend.negative_embeds.shape == (1, 77, 32)
    assert type(backend.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    records, enc = records_and_encoding(cfg, backend, KEYS[:2])
    a = backend.generate(records, enc)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, backend.generate(records, enc))
    expected = _pipeline_by_hand(cfg, records, [r.text for r in records], "blurry", EulerAncestralDiscreteScheduler)
    assert (a - expected).abs().max() < 1e-4
    backend.negative_embeds = backend.text_encoder.encode_text(["a bright colourful photo"]).hidden_states
    assert _per_image_gap(backend.generate(records, enc), a).min() > 1e-3


@pytest.mark.parametrize("override, message", [
    ("synth.resolution=36", r"cannot be produced by 'tiny:sd' \(needs a multiple of 8\)"),  # names the model
    ("synth.scheduler=NoSuchScheduler", "unknown synth.scheduler"),
    ("synth.model=tiny:vqgan", "cannot load diffusion pipeline"),
])
def test_diffusion_refuses_bad_settings(tmp_path, teacher, override, message):
    with pytest.raises(UserError, match=message):
        load_backend(fast_config(tmp_path, override), teacher)


def test_xformers_missing_names_the_extra(tmp_path, teacher):
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed")
    with pytest.raises(ImportError, match=r"dfkd\[gpu\]"):
        load_backend(fast_config(tmp_path, "synth.attention=xformers"), teacher)


def test_unknown_backend_lists_valid_ones():
    from synth.backends import get_backend

    with pytest.raises(UserError, match="clip_guided, diffusion"):
        get_backend("gan")


@pytest.mark.parametrize("param, model", [("decoder", "tiny:vqgan"), ("decoder", "tiny:vae"), ("pixels", "tiny:vqgan"),
                                          ("fourier", "tiny:vqgan"), ("strokes", "tiny:vqgan")])
def test_clip_guided_parameterizations(tmp_path, teacher, param, model):
    cfg = fast_config(tmp_path, *CLIP_GUIDED, f"synth.model={model}", f"synth.clip_guided.parameterization={param}")
    backend = load_backend(cfg, teacher)
    records, enc = records_and_encoding(cfg, backend, KEYS[:3])
    a = backend.generate(records, enc)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, backend.generate(records, enc))
    one, enc1 = records_and_encoding(cfg, backend, [KEYS[1]])
    assert (backend.generate(one, enc1)[0] - a[1]).abs().max() < 1e-3  # its own seed, not its batch mates


def test_clip_guided_lowers_the_spherical_distance(tmp_path, teacher):
    from synth.backends.clip_guided import spherical_distance

    cfg = fast_config(tmp_path, *CLIP_GUIDED, "synth.clip_guided.parameterization=pixels",
                      "synth.clip_guided.iterations=25", "synth.clip_guided.augmentations=[]")
    backend = load_backend(cfg, teacher)
    records, enc = records_and_encoding(cfg, backend, KEYS[:2])
    start = backend.param.render(backend.param.init([torch.Generator().manual_seed(r.seed) for r in records]))
    end = backend.generate(records, enc)
    d = [spherical_distance(teacher.image_features(x), enc.features).mean() for x in (start, end)]
    assert d[1] < d[0]


def test_clip_guided_resolution_the_decoder_cannot_make(tmp_path, teacher):
    with pytest.raises(UserError, match="multiple of 2"):
        load_backend(fast_config(tmp_path, *CLIP_GUIDED, "synth.resolution=33"), teacher)


def test_spherical_distance_invariants():
    from synth.backends.clip_guided import spherical_distance

    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(spherical_distance(a, a), torch.zeros(5), atol=1e-6)
    assert torch.allclose(spherical_distance(a, -a), torch.full((5,), torch.pi ** 2 / 2), atol=1e-2)  # arcsin is steep at 1
    b = torch.nn.functional.normalize(a + 0.1 * torch.randn(5, 8), dim=-1)
    assert (spherical_distance(a, b) < spherical_distance(a, -b)).all()


def test_cutouts_shape_and_per_image_randomness():
    from synth.backends.cutouts import make_cutouts

    images = torch.rand(3, 3, 40, 40)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    out = make_cutouts(images, gens([1, 2, 3]), cutouts=5, size=16)
    assert out.shape == (15, 3, 16, 16)
    alone = make_cutouts(images[1:2], gens([2]), cutouts=5, size=16)
    assert torch.allclose(out[5:10], alone, atol=1e-6)
    with pytest.raises(UserError, match="valid"):
        make_cutouts(images, gens([1, 2, 3]), cutouts=2, size=8, augmentations=["blur"])


def test_cutouts_min_size_bounds_the_crop():
    """With min_size=1 and no warps every cutout is the whole image (resampled); smaller min_size zooms in."""
    from synth.backends.cutouts import make_cutouts

    img = torch.rand(1, 3, 16, 16)
    gens = [torch.Generator().manual_seed(0)]
    whole = make_cutouts(img, gens, cutouts=3, size=16, min_frac=1.0, augmentations=[])
    assert torch.allclose(whole, img.expand(3, -1, -1, -1), atol=1e-5)
    gens = [torch.Generator().manual_seed(0)]
    zoomed = make_cutouts(img, gens, cutouts=3, size=16, min_frac=0.3, augmentations=[])
    assert not torch.allclose(zoomed, img.expand(3, -1, -1, -1), atol=1e-3)


def test_fourier_decay_makes_smoother_images():
    from synth.backends.clip_guided import FourierImage

    gens = [torch.Generator().manual_seed(0)]
    params = torch.randn(1, 3, 16, 9, 2)

    def roughness(decay):
        x = FourierImage(16, decay=decay).render(params)
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert roughness(2.0) < roughness(1.0) < roughness(0.0)
    assert FourierImage(16, decay=1.5).init(gens).shape == (1, 3, 16, 9, 2)


@pytest.mark.parametrize("override, key", [("synth.clip_guided.min_size=0", "min_size"),
                                           ("synth.clip_guided.decay=-1", "decay"),
                                           ("synth.clip_guided.cut_pow=0", "cut_pow")])
def test_clip_guided_refuses_bad_cutout_settings(override, key):
    from fixtures import REPO_ROOT

    from dfkd.config import load_config

    with pytest.raises(UserError, match=key):
        load_config(REPO_ROOT / "configs" / "tiny.yaml", [override])


def test_strokes_draw_lines_on_a_flat_background():
    from synth.backends.clip_guided import StrokeImage

    p = StrokeImage(32, strokes=1, points=2)
    params = torch.zeros(1, 4 + 1 + 3 + 3)
    params[0, :4] = torch.logit(torch.tensor([0.1, 0.5, 0.9, 0.5]))  # one horizontal line through the middle
    params[0, 5:8] = 10.0  # white stroke
    params[0, 8:] = -10.0  # black background
    img = p.render(params)[0]
    assert img.shape == (3, 32, 32)
    assert img[:, 16, 8:24].min() > 0.9 and img[:, 2, :].max() < 0.05 and img[:, 30, :].max() < 0.05
    params.requires_grad_(True)
    p.render(params).sum().backward()
    assert params.grad[0, :4].abs().sum() > 0  # the geometry gets gradients


def test_clip_guided_styles_live_in_the_teachers_text_tower(tmp_path):
    """A backend that declares no text encoder of its own (clip_guided) reads prompts with the teacher CLIP's
    text tower, so `prompts.encoder=auto` learns and encodes style vectors there."""
    from prompts.cli import load_prompt_encoder

    cfg = fast_config(tmp_path, *CLIP_GUIDED, "prompts.encoder=auto")
    encoder = load_prompt_encoder(cfg)
    assert encoder.identity.model_id == cfg.teacher.model == "tiny:clip"  # loaded as a CLIP model, not a pipeline


def test_clip_guided_over_a_pipeline_uses_its_vae(tmp_path, teacher):
    """``synth.model`` may name a text-to-image pipeline: the decoder is its ``vae`` (here the tiny SD's
    AutoencoderKL), weights and all."""
    from diffusers import AutoencoderKL

    from dfkd.models import resolve_model_id

    cfg = fast_config(tmp_path, *CLIP_GUIDED, "synth.model=tiny:sd", "synth.clip_guided.parameterization=decoder")
    backend = load_backend(cfg, teacher)
    own = AutoencoderKL.from_pretrained(resolve_model_id("tiny:sd"), subfolder="vae")
    assert isinstance(backend.param.ae, AutoencoderKL)
    assert all(torch.equal(a, b) for a, b in zip(backend.param.ae.state_dict().values(), own.state_dict().values()))
    records, enc = records_and_encoding(cfg, backend, KEYS[:2])
    a = backend.generate(records, enc)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1 and torch.equal(a, backend.generate(records, enc))


def test_clip_guided_over_a_model_without_an_autoencoder_is_one_line(tmp_path, teacher):
    cfg = fast_config(tmp_path, *CLIP_GUIDED, "synth.model=tiny:clip", "synth.clip_guided.parameterization=decoder")
    with pytest.raises(UserError, match="cannot load autoencoder"):
        load_backend(cfg, teacher)


def test_clip_guided_with_a_hub_id_and_the_hub_unreachable_fails_fast_and_quietly(tmp_path, teacher, monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, the decoder's config probe reads the local cache only: one exact
    line within seconds, and no warning (diffusers hands huggingface_hub an argument it deprecated)."""
    import time
    import warnings

    from huggingface_hub import constants

    import dfkd.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(dfkd.models, "_HUB_REACHABLE", None)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    cfg = fast_config(tmp_path, *CLIP_GUIDED, "synth.model=someone/not-cached", "synth.clip_guided.parameterization=decoder")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError) as info:
            load_backend(cfg, teacher)
    assert time.perf_counter() - start < 10
    assert str(info.value).startswith("cannot load autoencoder 'someone/not-cached': the Hub is offline")
