"""Toy labelled images for offline demos, tests and benchmarks (no real photos of the classes ship offline).

Each class is a coloured shape (circle, square, triangle, ...); each *domain* draws it in another
style: ``photo`` (filled, on a noisy textured background), ``sketch`` (black outline on white),
``painting`` (blurred, shifted palette on canvas) and ``cartoon`` (flat colour with a thick outline).
So the folder has a real domain shift, and numbers on it exercise the evaluation code end to end;
they say nothing about real-world accuracy.

    python -m dfkd.toydata runs/toy-eval --config configs/tiny.yaml     # ROOT/<domain>/<class>/*.jpg
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import UserError

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
DOMAINS = ("photo", "sketch", "painting", "cartoon")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    corners = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}[shape]
    offset = rot + (math.pi / 4 if shape == "square" else 0.0)
    return [(cx + r * math.cos(offset + 2 * math.pi * k / corners), cy + r * math.sin(offset + 2 * math.pi * k / corners))
            for k in range(corners)]


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    return [(cx + (r if k % 2 == 0 else r / 2.5) * math.cos(rot + math.pi * k / 5),
             cy + (r if k % 2 == 0 else r / 2.5) * math.sin(rot + math.pi * k / 5)) for k in range(10)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, pose: tuple[float, float, float, float], pen: tuple) -> None:
    """``pose``: centre x, centre y, radius, rotation; ``pen``: fill, outline, line width."""
    (cx, cy, r, rot), (fill, outline, width) = pose, pen
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "ring":
        draw.ellipse(box, fill=None, outline=fill or outline, width=max(width, int(r / 2.5)))
    elif shape == "cross":
        t = r / 3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill, outline=outline, width=width)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill, outline=outline, width=width)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r, rot), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill, outline=outline, width=width)


def render(label: int, num_classes: int, domain: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One ``size`` x ``size`` RGB image of class ``label`` drawn in ``domain``'s style."""
    shape = SHAPES[label % len(SHAPES)]
    hue = (label / max(num_classes, 1) + rng.normal(0, 0.02)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.9))
    cx, cy = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)
    r, rot = size * rng.uniform(0.22, 0.34), rng.uniform(0, 2 * math.pi)
    pose = (cx, cy, r, rot)
    if domain == "photo":
        bg = (rng.normal(110, 40, (size, size, 3)) + np.linspace(0, 60, size)[:, None, None]).clip(0, 255)
        img = Image.fromarray(bg.astype(np.uint8))
        _draw_shape(ImageDraw.Draw(img), shape, pose, (colour, None, 1))
        return img.filter(ImageFilter.GaussianBlur(0.6))
    if domain == "sketch":
        img = Image.new("RGB", (size, size), (250, 250, 250))
        _draw_shape(ImageDraw.Draw(img), shape, pose, (None, (20, 20, 20), max(1, size // 32)))
        return img
    if domain == "painting":
        canvas = np.full((size, size, 3), (235, 222, 190), dtype=np.float64) + rng.normal(0, 12, (size, size, 3))
        img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
        shifted = tuple(int(0.7 * c + 0.3 * w) for c, w in zip(colour, (200, 120, 60)))
        _draw_shape(ImageDraw.Draw(img), shape, pose, (shifted, None, 1))
        return img.filter(ImageFilter.GaussianBlur(size / 40))
    if domain == "cartoon":
        img = Image.new("RGB", (size, size), tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.2, 1)))
        _draw_shape(ImageDraw.Draw(img), shape, pose, (colour, (0, 0, 0), max(2, size // 16)))
        return img
    raise ValueError(f"unknown toy domain {domain!r}; valid: {', '.join(DOMAINS)}")


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_domainbed(root: str | Path, classes: Sequence[str], *, domains: Sequence[str] = ("photo", "sketch", "painting"),
                    per_class: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write ``ROOT/<domain>/<class>/<i>.jpg`` (class folder = the class name with spaces as underscores)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for domain, name in ((d, n) for d in domains for n in classes):  # "..", "a/b", "/x": a name, never a path
        if (root / domain / name.replace(" ", "_")).resolve().parent.parent != root.resolve():
            raise UserError(f"'{domain}/{name}' cannot be a folder name inside {root}; use plain names")
    for domain in domains:
        for label, name in enumerate(classes):
            folder = root / domain / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i:04d}.jpg").write_bytes(jpeg_bytes(render(label, len(classes), domain, rng, size)))
    return root


def write_synthetic_dataset(folder: str | Path, classes: Sequence[str], *, per_class: int = 8, size: int = 32,
                            seed: int = 0, domains: Sequence[str] = DOMAINS, shard_size: int = 64) -> Path:
    """A stand-in for ``dfkd synth`` output, written to the ``dfkd/schema.py`` contract (parquet shards in
    ``folder/data``): toy images of every class in mixed styles, JPEG bytes at ``size`` px."""
    import datasets

    from dfkd.schema import DATA_DIR, features, file_sha256, record_hash

    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            domain = domains[i % len(domains)]
            image = {"bytes": jpeg_bytes(render(label, len(classes), domain, rng, size)), "path": None}
            rows.append({"image": image, "label": label, "index": i, "class_name": name,
                         "prompt": f"a {domain} style image of a {name}", "method": "toy",
                         "style": f'{{"toy_domain": "{domain}"}}', "seed": seed * 100_000 + label * 1000 + i,
                         "generator": "toy:shapes", "teacher_confidence": 0.0})
    ds = datasets.Dataset.from_list(rows, features=features(classes))
    data = Path(folder) / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(ds), shard_size)):
        shard = data / f"train-{k:05d}.parquet"
        ds.select(range(start, min(start + shard_size, len(ds)))).to_parquet(str(shard))
        record_hash(shard, file_sha256(shard))  # committed as `dfkd synth` commits its shards
    return Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfkd.toydata", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="output folder (DomainBed layout)")
    p.add_argument("--config", help="take the classes from this experiment YAML")
    p.add_argument("--classes", help="comma-separated class names (instead of --config)")
    p.add_argument("--domains", default="photo,sketch,painting")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    if args.config:
        from dfkd.config import load_config

        classes = load_config(args.config, ["output_dir=unused"]).classes
    elif args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    else:
        p.error("give --config or --classes")
    try:
        root = write_domainbed(args.root, classes, domains=args.domains.split(","), per_class=args.per_class,
                               size=args.size)
    except UserError as exc:
        p.error(str(exc))
    print(f"toy DomainBed folder -> {root} ({args.domains}; {len(classes)} classes x {args.per_class} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
