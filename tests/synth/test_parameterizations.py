"""The CLIP-guided image parameterisations, each checked against a plain NumPy rendering of its definition
(docs/method.md section 4): the decorrelated Fourier image and the soft polyline strokes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from synth.backends.clip_guided import FourierImage, PixelImage, StrokeImage, _straight_through_clamp


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _fourier_by_hand(params: np.ndarray, r: int, decay: float) -> np.ndarray:
    """sigmoid(ortho inverse real 2-D DFT of the spectrum times R times the 1/f scale, max-normalised)."""
    spectrum = params[..., 0] + 1j * params[..., 1]  # (B, 3, R, R//2+1)
    scale = np.zeros((r, r // 2 + 1))
    for ky in range(r):
        fy = ky / r if ky < (r + 1) // 2 else (ky - r) / r  # numpy's fftfreq convention, written out
        for kx in range(r // 2 + 1):
            fx = kx / r
            scale[ky, kx] = 1.0 / max(np.hypot(fx, fy), 1.0 / r) ** decay
    scale /= scale.max()
    x = np.fft.irfft2(spectrum * scale * r, s=(r, r), norm="ortho")
    return _sigmoid(x)


@pytest.mark.parametrize("r,decay", [(15, 1.0), (16, 1.5)])  # odd R: the output size must be passed to the inverse
def test_fourier_image_renders_the_scaled_spectrum(r, decay):
    p = FourierImage(r, decay=decay)
    params = torch.randn(2, 3, r, r // 2 + 1, 2, generator=torch.Generator().manual_seed(0))
    out = p.render(params)
    assert out.shape == (2, 3, r, r)
    np.testing.assert_allclose(out.numpy(), _fourier_by_hand(params.double().numpy(), r, decay), atol=1e-5)


def test_fourier_and_pixel_init_are_small_seeded_normals():
    """init draws N(0, 1) per image from that image's generator, times a fixed scale: 0.01 for the spectrum (a
    near-grey start), 0.5 for pixels."""
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    got = FourierImage(16).init(gens)
    want = torch.stack([torch.randn(3, 16, 9, 2, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    torch.testing.assert_close(got, want * 0.01)
    gens = [torch.Generator().manual_seed(5)]
    torch.testing.assert_close(PixelImage(8).init(gens),
                               torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(5))[None] * 0.5)


def _strokes_by_hand(params: np.ndarray, r: int, strokes: int, points: int) -> np.ndarray:
    """Loops over pixels: distance from the pixel centre ((i + 0.5) / R) to each stroke's polyline, a soft edge
    at the stroke's half-width (0.5 to 3 px), strokes painted in order over the background colour."""
    out = np.zeros((params.shape[0], 3, r, r))
    n_pts = strokes * points * 2
    for b in range(params.shape[0]):
        v = params[b]
        pts = _sigmoid(v[:n_pts]).reshape(strokes, points, 2)  # (x, y) in [0, 1]
        widths = v[n_pts:n_pts + strokes]
        colours = _sigmoid(v[n_pts + strokes:n_pts + 4 * strokes]).reshape(strokes, 3)
        background = _sigmoid(v[n_pts + 4 * strokes:])
        for i in range(r):
            for j in range(r):
                c = np.array([(j + 0.5) / r, (i + 0.5) / r])
                pixel = background.copy()
                for s in range(strokes):
                    d = np.inf
                    for k in range(points - 1):
                        a, e = pts[s, k], pts[s, k + 1]
                        ab = e - a
                        t = np.clip(np.dot(c - a, ab) / max(np.dot(ab, ab), 1e-8), 0, 1)
                        d = min(d, np.linalg.norm(c - (a + t * ab)))
                    half_width = (0.5 + 2.5 * _sigmoid(widths[s])) / r
                    alpha = _sigmoid((half_width - d) * 2 * r)
                    pixel = pixel * (1 - alpha) + colours[s] * alpha
                out[b, :, i, j] = pixel
    return out


def test_strokes_render_the_polylines_by_definition():
    r, strokes, points = 9, 2, 3
    p = StrokeImage(r, strokes=strokes, points=points)
    params = torch.randn(2, strokes * points * 2 + strokes + 3 * strokes + 3, generator=torch.Generator().manual_seed(1))
    out = p.render(params)
    assert out.shape == (2, 3, r, r)
    np.testing.assert_allclose(out.numpy(), _strokes_by_hand(params.double().numpy(), r, strokes, points), atol=1e-5)
    gens = [torch.Generator().manual_seed(7)]
    torch.testing.assert_close(p.init(gens), torch.randn(params.shape[1], generator=torch.Generator().manual_seed(7))[None])


# --- defaults, the straight-through clamp and the decoder parameterisation


def test_defaults_are_the_documented_ones_and_build_without_warnings():
    """Fourier decay 1 (a 1/f spectrum); 4 strokes of 4 points: 4*4*2 point coordinates, 4 widths, 4*3 colours
    and a background colour per image. Building the stroke grid names its meshgrid indexing (no warning)."""
    torch.testing.assert_close(FourierImage(16).scale, FourierImage(16, decay=1.0).scale)
    assert not torch.allclose(FourierImage(16).scale, FourierImage(16, decay=2.0).scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strokes = StrokeImage(8)
    assert strokes.init([torch.Generator().manual_seed(0)]).shape == (1, 4 * 4 * 2 + 4 + 4 * 3 + 3)


def test_straight_through_clamp_clamps_forward_and_passes_the_gradient_unchanged():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7], requires_grad=True)
    y = _straight_through_clamp(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0.0, 0.3, 1.0, 1.0]))
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))


@pytest.fixture(scope="module")
def deep_vae(tmp_path_factory):
    """An AutoencoderKL with 4 blocks (downsampling factor 8, not 2 * 3) and scaling_factor 0.5, saved with
    save_pretrained; and a copy whose config has no usable scaling_factor (null)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                       block_out_channels=(4, 4, 4, 4), layers_per_block=1, latent_channels=2, norm_num_groups=2,
                       sample_size=16, scaling_factor=0.5)
    root = tmp_path_factory.mktemp("deep_vae")
    ae.save_pretrained(root / "vae")
    ae.register_to_config(scaling_factor=None)
    ae.save_pretrained(root / "unscaled")
    return root


def test_decoder_latent_draws_latents_at_the_decoders_scale_and_renders_its_decoding(deep_vae):
    from synth.backends.clip_guided import DecoderLatent

    p = DecoderLatent(16, str(deep_vae / "vae"))
    assert (p.factor, p.channels) == (8, 2)
    assert not any(q.requires_grad for q in p.ae.parameters())
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    z = p.init(gens)  # N(0, 1) / scaling_factor, at init_scale 1
    want = torch.stack([torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]) / 0.5
    torch.testing.assert_close(z, want)
    assert DecoderLatent(16, str(deep_vae / "vae"), init_scale=0.25).latent_scale == 0.25 / 0.5
    assert DecoderLatent(16, str(deep_vae / "unscaled")).latent_scale == 1.0  # no scaling factor: none applied
    with torch.no_grad():
        decoded = p.ae.decode(z).sample.float()
    torch.testing.assert_close(p.render(z), ((decoded + 1) / 2).clamp(0, 1))


def test_decoder_latent_and_its_loader_keep_the_requested_dtype(deep_vae):
    from synth.backends.clip_guided import DecoderLatent, load_autoencoder

    assert {q.dtype for q in load_autoencoder(str(deep_vae / "vae"), torch.bfloat16).parameters()} == {torch.bfloat16}
    p = DecoderLatent(16, str(deep_vae / "vae"), dtype=torch.bfloat16)
    assert {q.dtype for q in p.ae.parameters()} == {torch.bfloat16}
    out = p.render(p.init([torch.Generator().manual_seed(0)]))  # float32 latents are cast to the decoder's dtype
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_load_autoencoder_names_what_it_could_not_load(tmp_path):
    from dfkd.errors import UserError
    from synth.backends.clip_guided import load_autoencoder

    with pytest.raises(UserError, match=r"^cannot load autoencoder '.*nope': no such folder"):
        load_autoencoder(str(tmp_path / "nope"), torch.float32)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(UserError, match=r"is a UNet2DModel; the clip_guided decoder needs a VQModel or AutoencoderKL"):
        load_autoencoder(str(unet), torch.float32)
