"""The CLIP-guided image parameterisations, each checked against a plain NumPy rendering of its definition
(docs/method.md section 4): the decorrelated Fourier image and the soft polyline strokes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.backends.clip_guided import FourierImage, PixelImage, StrokeImage


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
