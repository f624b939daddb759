"""The backends' definitions (docs/method.md section 4) checked against independent computations: the cutouts
against a NumPy rendering of their warp and jitter, the diffusion backend against diffusers run by hand, the
CLIP-guided loss and decoder against CLIP and the autoencoder run by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dfkd.errors import UserError

# ---------------------------------------------------------------- cutouts


def _sample_reflected(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` ``(3, H, W)`` at normalised ``x``, ``y`` in [-1, 1] (pixel edges, i.e.
    ``align_corners=False``), mirrored at the image border; ``(3, N)``."""
    _, h, w = img.shape

    def pixel_coord(v, n):
        p = ((v + 1) * n - 1) / 2 + 0.5  # 0 .. n across the image, pixel edges at integers
        p = np.abs(p) % (2 * n)
        p = np.where(p > n, 2 * n - p, p)  # mirror at the far edge
        return np.clip(p - 0.5, 0, n - 1)

    px, py = pixel_coord(x, w), pixel_coord(y, h)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = px - x0, py - y0
    return (img[:, y0, x0] * (1 - ax) * (1 - ay) + img[:, y0, x1] * ax * (1 - ay)
            + img[:, y1, x0] * (1 - ax) * ay + img[:, y1, x1] * ax * ay)


def _cutouts_by_hand(images, seeds, *, n, size, cut_pow=1.0, min_frac=0.25, augs=("affine", "perspective",
                     "color_jitter", "noise"), noise_std=0.1):
    """Per image, 11 uniforms per cutout from the image's own generator (side, centre x/y, angle, shear,
    perspective x/y, brightness, contrast, saturation, noise level), then its Gaussian noise; each cutout samples
    the image at ``(s * R(angle) @ [[1, shear], [0, 1]] @ p + c) / (1 + <persp, p>)`` for output pixel centres
    ``p`` in [-1, 1]; then saturation, contrast, brightness jitter of +-0.1 and noise of std ``u * noise_std``.
    Returns ``(views, sample points)``."""
    views, points = [], []
    for img, seed in zip(images.double().numpy(), seeds):
        g = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(n, 11, generator=g).double().numpy()
        noise = torch.randn(n, 3, size, size, generator=g).double().numpy() if "noise" in augs else None
        centres = (2 * np.arange(size) + 1) / size - 1
        gy, gx = np.meshgrid(centres, centres, indexing="ij")
        p = np.stack([gx.ravel(), gy.ravel()])  # (2, size*size): x, y
        for k, u in enumerate(uniforms):
            side = min_frac + (1 - min_frac) * u[0] ** cut_pow
            c = np.array([(2 * u[1] - 1) * (1 - side), (2 * u[2] - 1) * (1 - side)])
            angle = (2 * u[3] - 1) * math.pi / 12 if "affine" in augs else 0.0
            shear = (2 * u[4] - 1) * 0.15 if "affine" in augs else 0.0
            persp = np.array([2 * u[5] - 1, 2 * u[6] - 1]) * (0.25 if "perspective" in augs else 0.0)
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            q = (side * rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ p + c[:, None]) / (1 + persp @ p)
            points.append(q)
            x = _sample_reflected(img, q[0], q[1]).reshape(3, size, size)
            if "color_jitter" in augs:
                bright, contrast, sat = (2 * u[7:10] - 1) * 0.1
                grey = x.mean(0, keepdims=True)
                x = grey + (x - grey) * (1 + sat)
                x = (x - x.mean()) * (1 + contrast) + x.mean() + bright
            if noise is not None:
                x = x + noise[k] * u[10] * noise_std
            views.append(x)
    return np.stack(views), np.stack(points)


@pytest.mark.parametrize("augs, kwargs", [
    (None, {}),  # every augmentation, the default side distribution and noise level
    (["affine"], {"cut_pow": 2.0, "min_frac": 0.4}),
    (["perspective"], {"cut_pow": 0.5, "min_frac": 0.6}),
    (["color_jitter"], {"min_frac": 0.3}),
    (["noise"], {"noise_std": 0.5}),
    ([], {"min_frac": 0.5}),
])
def test_cutouts_are_the_documented_warps_and_jitter(augs, kwargs):
    """Non-square images, each cutout against the NumPy warp of its own uniforms and noise."""
    from synth.backends.cutouts import make_cutouts

    images = torch.rand(2, 3, 10, 13, generator=torch.Generator().manual_seed(0))
    seeds = [11, 12]
    extra = {} if augs is None else {"augmentations": augs}
    got = make_cutouts(images, [torch.Generator().manual_seed(s) for s in seeds], cutouts=4, size=7, **extra, **kwargs)
    want, points = _cutouts_by_hand(images, seeds, n=4, size=7, **({} if augs is None else {"augs": augs}), **kwargs)
    assert got.shape == (8, 3, 7, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    if augs is None:
        assert np.abs(points).max() > 1  # some samples fall outside the image: the mirroring is pinned too


def test_cutouts_emit_no_warnings_and_pass_gradients():
    from synth.backends.cutouts import make_cutouts

    images = torch.rand(1, 3, 9, 9, requires_grad=True)
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch's warn-once notices (meshgrid without indexing) fire even if seen before
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = make_cutouts(images, [torch.Generator().manual_seed(0)], cutouts=2, size=5)
    finally:
        torch.set_warn_always(always)
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_cutouts_keep_float64_images_in_float64():
    from synth.backends.cutouts import make_cutouts

    images = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = make_cutouts(images, [torch.Generator().manual_seed(4)], cutouts=3, size=6)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _cutouts_by_hand(images, [4], n=3, size=6)[0], atol=1e-5)


# ---------------------------------------------------------------- diffusion


@pytest.fixture(scope="module")
def tiny_pipe(_tiny_cache):
    from fixtures import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_diffusion(tmp_path, *overrides):
    from fixtures import tiny_config

    from synth.backends import get_backend

    cfg = tiny_config(tmp_path, "classes=[dog,guitar]", "synth.steps=2", "prompts.method=plain", *overrides)
    return cfg, get_backend("diffusion").load(cfg, teacher=None, device=torch.device("cpu"))


def _plain_records(cfg, backend, labels):
    from prompts.methods import create_prompt_method

    method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=backend.text_encoder, seed=cfg.seed,
                                  run_dir=cfg.out)
    records = [method.record(label, 0) for label in labels]
    return records, method.encode(records)


def _hidden_states(pipe, texts):
    ids = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


def test_diffusion_load_applies_every_setting(tmp_path):
    """dtype, the model id (in generator_id and in the style-vector identity of the text encoder), the resolution;
    guidance 1 is no guidance: no negative prompt is encoded; no safety checker is asked for."""
    _, backend = _load_diffusion(tmp_path, "synth.dtype=fp16", "synth.guidance_scale=1.0", "synth.resolution=16")
    pipe = backend.pipe
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float16
    assert backend.generator_id == "diffusion:tiny:sd" and backend.text_encoder.identity.model_id == "tiny:sd"
    assert backend.resolution == 16 and backend.negative_embeds is None
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False


class _Terminal:
    """A stderr that says it is a terminal (tqdm hides its bars only on non-terminals when not told)."""

    def __init__(self):
        self.text = []

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_diffusion_guidance_above_one_at_another_resolution(tmp_path, tiny_pipe, monkeypatch):
    """guidance_scale=1.5, 16 px: the images are diffusers' own with the negative prompt's hidden states at that
    size and the configured steps; no progress bar is drawn, even on a terminal."""
    cfg, backend = _load_diffusion(tmp_path, "synth.guidance_scale=1.5", "synth.negative_prompt=blurry",
                                   "synth.resolution=16")
    records, enc = _plain_records(cfg, backend, [0, 1])
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    images = backend.generate(records, enc)
    monkeypatch.undo()
    assert images.shape == (2, 3, 16, 16) and not "".join(terminal.text)
    with torch.no_grad():
        expected = tiny_pipe(prompt_embeds=_hidden_states(tiny_pipe, [r.text for r in records]),
                             negative_prompt_embeds=_hidden_states(tiny_pipe, ["blurry"] * 2), num_inference_steps=2,
                             guidance_scale=1.5, height=16, width=16, output_type="pt",
                             generator=[torch.Generator().manual_seed(int(r.seed)) for r in records]).images
    assert (images - expected).abs().max() < 1e-4


def test_check_pipeline_refuses_what_it_cannot_drive(tiny_pipe):
    """No text encoder, or several without a pooled_prompt_embeds input, is refused before any image; the tiny
    pipeline and an SDXL-layout pipeline pass."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from synth.backends.diffusion import check_pipeline

    c = tiny_pipe.components
    check_pipeline(tiny_pipe, "tiny:sd", 32)
    with pytest.raises(UserError, match="no prompt_embeds from a CLIP text encoder"):
        check_pipeline(StableDiffusionPipeline(**{**c, "text_encoder": None}), "x", 32)
    xl = StableDiffusionXLPipeline(vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder"],
                                   tokenizer=c["tokenizer"], tokenizer_2=c["tokenizer"], unet=c["unet"],
                                   scheduler=c["scheduler"])
    check_pipeline(xl, "x", 32)  # two text encoders and pooled embeddings: driven

    class TwoEncodersNoPooled(DiffusionPipeline):
        def __init__(self, unet, scheduler, text_encoder, text_encoder_2):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder,
                                  text_encoder_2=text_encoder_2)

        def __call__(self, prompt_embeds=None, num_inference_steps=1):
            raise AssertionError("never called")

    odd = TwoEncodersNoPooled(c["unet"], c["scheduler"], c["text_encoder"], c["text_encoder"])
    with pytest.raises(UserError, match="has the text encoders of sdxl but takes no pooled_prompt_embeds"):
        check_pipeline(odd, "x", 32)


@pytest.mark.parametrize("factor, resolution, multiple, suggestion", [
    (2, 36, 8, "use 32 or 40"),  # the tiny VAE: 8 (diffusers' own check) dominates
    (2, 4, 8, "use 8 or 8"),
    (16, 40, 16, "use 32 or 48"),  # a deeper VAE
    (3, 36, 24, "use 24 or 48"),  # lcm, not max
    (None, 12, 8, "use 8 or 16"),  # a pipeline that does not say: 8
    ("missing", 12, 8, "use 8 or 16"),
])
def test_resolution_must_be_a_multiple_of_the_vae_factor_and_8(tiny_pipe, monkeypatch, factor, resolution, multiple,
                                                                suggestion):
    from synth.backends.diffusion import check_pipeline, required_multiple

    if factor == "missing":
        monkeypatch.delattr(tiny_pipe, "vae_scale_factor")
    else:
        monkeypatch.setattr(tiny_pipe, "vae_scale_factor", factor)
    assert required_multiple(tiny_pipe) == multiple
    check_pipeline(tiny_pipe, "tiny:sd", 2 * multiple)
    with pytest.raises(UserError, match=f"cannot be produced by 'tiny:sd' \\(needs a multiple of {multiple}\\); "
                                        f"{suggestion}$"):
        check_pipeline(tiny_pipe, "tiny:sd", resolution)


def test_scheduler_must_name_a_diffusers_scheduler(tiny_pipe):
    """A diffusers class that is not a scheduler is refused too; the message lists 12 real schedulers, sorted."""
    import diffusers

    from synth.backends.diffusion import _set_scheduler

    before = tiny_pipe.scheduler
    with pytest.raises(UserError, match="unknown synth.scheduler 'UNet2DConditionModel'") as err:
        _set_scheduler(tiny_pipe, "UNet2DConditionModel")
    listed = str(err.value).split("include: ")[1].removesuffix(", ...").split(", ")
    assert len(listed) == 12 and listed == sorted(listed)
    assert all(n.endswith("Scheduler") and hasattr(getattr(diffusers, n), "from_config") for n in listed)
    assert tiny_pipe.scheduler is before
    _set_scheduler(tiny_pipe, None)
    _set_scheduler(tiny_pipe, "")
    assert tiny_pipe.scheduler is before


def test_xformers_importable_hands_over_to_diffusers(tiny_pipe, tmp_path, monkeypatch):
    """When an ``xformers`` module can be found, the pipeline's own switch is called (here it fails on the stand-in
    package, with diffusers' message, not the install hint)."""
    from synth.backends.diffusion import _set_attention

    (tmp_path / "xformers").mkdir()
    (tmp_path / "xformers" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as err:
        _set_attention(tiny_pipe, "xformers")
    assert "dfkd[gpu]" not in str(err.value)
    _set_attention(tiny_pipe, "sdpa")  # the default: nothing to switch


# ---------------------------------------------------------------- CLIP-guided


@pytest.fixture(scope="module")
def clip_teacher(_tiny_cache):
    from prompts.teacher import ClipTeacher

    return ClipTeacher.load("tiny:clip")


def _load_clip_guided(tmp_path, teacher, *overrides):
    from fixtures import tiny_config

    from synth.backends import get_backend

    cfg = tiny_config(tmp_path, "classes=[dog,guitar]", "prompts.method=plain", "synth.backend=clip_guided",
                      "synth.model=tiny:vqgan", "synth.resolution=16", *overrides)
    return cfg, get_backend("clip_guided").load(cfg, teacher=teacher, device=torch.device("cpu"))


def test_spherical_distance_is_its_definition_over_the_last_axis_and_finite_at_antipodes():
    from synth.backends.clip_guided import spherical_distance

    a = torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    want = [[2 * math.asin(min(1.0, float((a[i, j] - b[i, 0]).norm()) / 2)) ** 2 for j in range(3)] for i in range(2)]
    torch.testing.assert_close(spherical_distance(a, b), torch.tensor(want))
    # seed 0 is a unit vector whose float32 norm rounds to 1.0000001: |a - (-a)| / 2 > 1 must still give pi^2 / 2
    u = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert float((2 * u).norm() / 2) > 1
    assert math.isclose(float(spherical_distance(u, -u)), math.pi ** 2 / 2, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["fourier", "strokes"])
def test_clip_guided_load_hands_every_setting_to_its_parameterization(tmp_path, clip_teacher, name):
    from synth.backends.clip_guided import FourierImage

    _, backend = _load_clip_guided(tmp_path, clip_teacher, f"synth.clip_guided.parameterization={name}",
                                   "synth.clip_guided.decay=1.7", "synth.clip_guided.strokes=2",
                                   "synth.clip_guided.stroke_points=3")
    assert backend.resolution == 16 and backend.generator_id == f"clip_guided:{name}"
    if name == "fourier":
        torch.testing.assert_close(backend.param.scale, FourierImage(16, decay=1.7).scale)
    else:
        assert (backend.param.strokes, backend.param.points, backend.param.resolution) == (2, 3, 16)


def test_clip_guided_load_hands_dtype_and_init_scale_to_the_decoder(tmp_path, clip_teacher):
    _, backend = _load_clip_guided(tmp_path, clip_teacher, "synth.clip_guided.parameterization=decoder",
                                   "synth.dtype=bf16", "synth.clip_guided.init_scale=0.3")
    scaling = float(backend.param.ae.config.scaling_factor or 1.0)
    assert backend.param.ae.dtype == torch.bfloat16 and backend.param.latent_scale == pytest.approx(0.3 / scaling)
    assert backend.generator_id == "clip_guided:tiny:vqgan"


def test_clip_guided_generate_is_adam_on_the_cutout_loss(tmp_path, clip_teacher):
    """generate() == by hand: the parameterisation's init from each image's seed, then ``iterations`` Adam steps
    (lr from the config) on the sum over images of the mean spherical distance between the teacher's features of
    the image's cutouts (every cutout setting from the config) and the image's target text features."""
    from synth.backends.clip_guided import spherical_distance
    from synth.backends.cutouts import make_cutouts
    from synth.backends.diffusion import image_generators

    overrides = ("synth.clip_guided.parameterization=fourier", "synth.clip_guided.iterations=3",
                 "synth.clip_guided.cutouts=3", "synth.clip_guided.lr=0.2", "synth.clip_guided.cut_pow=2.0",
                 "synth.clip_guided.min_size=0.6", "synth.clip_guided.augmentations=[affine,noise]")
    cfg, backend = _load_clip_guided(tmp_path, clip_teacher, *overrides)
    records, encoding = _plain_records(cfg, backend, [0, 1])
    got = backend.generate(records, encoding)

    c, param = cfg.synth.clip_guided, backend.param
    params = param.init(image_generators(records)).requires_grad_(True)
    aug_gens = image_generators(records)
    target = encoding.features.float().unsqueeze(1)
    opt = torch.optim.Adam([params], lr=0.2)
    for step in range(3):
        views = make_cutouts(param.render(params), aug_gens, cutouts=3, size=clip_teacher.image_size, cut_pow=2.0,
                             min_frac=0.6, augmentations=["affine", "noise"])
        feats = clip_teacher.image_features(views).view(2, 3, -1)
        loss = spherical_distance(feats, target).mean(1).sum()
        if step == 0:  # the loss itself, not only its direction (Adam is blind to a constant factor)
            torch.testing.assert_close(backend._loss(params, target, image_generators(records)), loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert c.lr == 0.2 and got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, param.render(params).detach())


def test_clip_guided_images_are_in_range_whatever_the_parameterization_renders(tmp_path, clip_teacher):
    """The backend promises [0, 1]; a registered parameterisation that renders outside it is clamped."""
    from synth.backends.clip_guided import _PARAMETERIZATIONS, PixelImage, register_parameterization

    @register_parameterization("test_unbounded")
    class Unbounded(PixelImage):
        def render(self, params):
            return params * 10

    try:
        cfg, backend = _load_clip_guided(tmp_path, clip_teacher, "synth.clip_guided.parameterization=test_unbounded",
                                         "synth.clip_guided.iterations=1")
        records, encoding = _plain_records(cfg, backend, [0, 1])
        images = backend.generate(records, encoding)
        assert images.min() == 0 and images.max() == 1  # 10 x N(0, 0.5) reaches far past both ends
    finally:
        _PARAMETERIZATIONS._items.pop("test_unbounded", None)


def test_a_pipeline_that_registers_no_text_encoder_is_refused_in_one_line(tiny_pipe):
    """A custom pipeline whose ``__call__`` takes ``prompt_embeds`` but that registers no ``text_encoder`` at all:
    refused like one whose text encoder is None, not an AttributeError."""
    from diffusers import DiffusionPipeline

    from synth.backends.diffusion import check_pipeline

    class EmbedsOnly(DiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        def __call__(self, prompt_embeds=None, num_inference_steps=1):
            raise AssertionError("never called")

    pipe = EmbedsOnly(tiny_pipe.unet, tiny_pipe.scheduler)
    assert not hasattr(pipe, "text_encoder")
    with pytest.raises(UserError, match="no prompt_embeds from a CLIP text encoder"):
        check_pipeline(pipe, "x", 32)


def test_a_pipeline_saved_with_a_safety_checker_loads_without_it_and_without_a_warning(tmp_path, tiny_pipe, caplog):
    """An SD 1.x folder ships a safety checker (which would black out images and cost memory): synth loads the
    pipeline without it, and says nothing about having disabled it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 4}
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision, projection_dim=768)).eval()
    folder = tmp_path / "sd-with-checker"
    StableDiffusionPipeline(**{**tiny_pipe.components, "safety_checker": checker,
                               "feature_extractor": CLIPImageProcessor()}).save_pretrained(folder)
    assert (folder / "safety_checker" / "config.json").is_file()
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # `dfkd` commands run earlier in this process may have quietened it
    caplog.clear()
    try:
        with caplog.at_level("WARNING", logger="diffusers"):
            _, backend = _load_diffusion(tmp_path, f"synth.model={folder}")
    finally:
        diffusers_logging.set_verbosity(level)
    assert backend.pipe.safety_checker is None
    assert not [r for r in caplog.records if "safety checker" in r.getMessage()]


def test_synth_compile_wraps_the_unet_in_torch_compile(tmp_path):
    """``synth.compile=true`` hands the pipeline's own UNet to ``torch.compile`` (compiled lazily, on the first
    call, so loading stays cheap here)."""
    from torch._dynamo.eval_frame import OptimizedModule

    _, plain = _load_diffusion(tmp_path)
    _, compiled = _load_diffusion(tmp_path, "synth.compile=true")
    assert not isinstance(plain.pipe.unet, OptimizedModule)
    assert isinstance(compiled.pipe.unet, OptimizedModule)
    assert type(compiled.pipe.unet._orig_mod) is type(plain.pipe.unet)
    assert all(torch.equal(a, b) for a, b in zip(compiled.pipe.unet._orig_mod.state_dict().values(),
                                                 plain.pipe.unet.state_dict().values()))
