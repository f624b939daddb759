"""Synthetic-set diagnostics from the written dataset (what ``distill`` will read).

* teacher agreement: the fraction of images the teacher's zero-shot head assigns to their label;
* per-class diversity of the teacher's image features: mean pairwise cosine distance and the
  Vendi score ``exp(-sum(l * log l))`` over the eigenvalues ``l`` of ``X X^T / n`` (X: normalised
  features); it reads as an "effective number of distinct images" in ``[1, n]``;
* a preview grid PNG, one row per class.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfkd import schema
from prompts.styles import mean_pairwise_cosine_distance

from .writer import shard_info

PREVIEW_NAME = "preview.png"


def vendi_score(features: torch.Tensor) -> float:
    """``(n, D)`` normalised features -> Vendi score in ``[1, n]`` (1: all identical; n: orthogonal)."""
    x = features.double()
    n = x.shape[0]
    gram = x.t() @ x / n if x.shape[1] < n else x @ x.t() / n  # same non-zero eigenvalues
    eig = torch.linalg.eigvalsh(gram).clamp_min(0)
    eig = eig[eig > 1e-12]
    return float(torch.exp(-(eig * eig.log()).sum()))


class _Accumulator:
    """Per-class counts, agreement, confidence, teacher features (capped), preview images; filter counts."""

    def __init__(self, num_classes: int, max_features: int, preview: int):
        self.counts, self.correct, self.conf = [0] * num_classes, [0] * num_classes, [0.0] * num_classes
        self.feats: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
        self.preview: dict[tuple[int, int], np.ndarray] = {}
        self.filter: dict[str, int] = {}  #: the shards' filter counts, summed
        self.max_features, self.preview_per_class = max_features, preview

    def add(self, image: np.ndarray, label: int, index: int, pred: int, feature: torch.Tensor, conf: float) -> None:
        self.counts[label] += 1
        self.correct[label] += int(pred == label)
        self.conf[label] += float(conf)
        if index < self.max_features:
            self.feats[label].append(feature)
        if index < self.preview_per_class:
            self.preview[(label, index)] = image

    def per_class(self, classes: Sequence[str]) -> dict:
        out = {}
        for c, name in enumerate(classes):
            n, f = self.counts[c], torch.stack(self.feats[c]) if self.feats[c] else None
            out[name] = {
                "count": n,
                "agreement": self.correct[c] / n if n else 0.0,
                "mean_confidence": self.conf[c] / n if n else 0.0,
                "mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(f) if f is not None else 0.0,
                "vendi_score": vendi_score(f) if f is not None else 0.0,
            }
        return out


@torch.no_grad()
def _score_shards(dataset_dir: Path, teacher, acc: _Accumulator, batch_size: int) -> None:
    """Decode every stored image once, one committed shard at a time (never the whole set in memory), and feed
    the teacher's view of it, and the shard's filter counts, to ``acc``."""
    import pyarrow.parquet as pq

    for path in sorted((dataset_dir / schema.DATA_DIR).glob("*.parquet")):
        for k, v in shard_info(path).items():
            acc.filter[k] = acc.filter.get(k, 0) + int(v)
        d = pq.read_table(path, columns=["image", "label", "index", "teacher_confidence"]).to_pydict()
        for start in range(0, len(d["label"]), batch_size):
            sl = slice(start, start + batch_size)
            arrays = [np.asarray(Image.open(io.BytesIO(im["bytes"])).convert("RGB")) for im in d["image"][sl]]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255).to(teacher.device)
            feats = teacher.image_features(x)
            preds = teacher.logits_from_features(feats).argmax(-1).cpu().tolist()
            for item in zip(arrays, d["label"][sl], d["index"][sl], preds, feats.cpu(), d["teacher_confidence"][sl]):
                acc.add(*item)


def compute_diagnostics(dataset_dir: Path, cfg, teacher, batch_size: int = 64) -> dict:
    """Counts, agreement, diversity and the preview grid (written to ``dataset_dir``) of the stored dataset."""
    s = cfg.synth
    acc = _Accumulator(len(cfg.classes), s.diagnostics_max_per_class, s.preview_per_class)
    _score_shards(dataset_dir, teacher, acc, batch_size)
    per_class = acc.per_class(cfg.classes)
    total = sum(acc.counts)
    grid = preview_grid(acc.preview, len(cfg.classes), s.preview_per_class, s.store_resolution,
                        labels=cfg.classes)
    if grid is not None:
        Image.fromarray(grid).save(dataset_dir / PREVIEW_NAME)
    return {
        "rows": total,
        "teacher_agreement": sum(acc.correct) / total if total else 0.0,
        "mean_confidence": sum(acc.conf) / total if total else 0.0,
        "mean_pairwise_cosine_distance": _mean(v["mean_pairwise_cosine_distance"] for v in per_class.values()),
        "vendi_score": _mean(v["vendi_score"] for v in per_class.values()),
        "filter": acc.filter,
        "per_class": per_class,
        "preview": PREVIEW_NAME if grid is not None else None,
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def preview_grid(images: dict[tuple[int, int], np.ndarray], rows: int, cols: int, size: int,
                 cell: int = 64, labels: Sequence[str] | None = None) -> np.ndarray | None:
    """``(rows * c, L + k * c, 3)`` uint8: row = class (its name in a strip of width ``L`` on the left, when
    ``labels`` are given), column = index, ``k`` = at most ``cols`` columns and no more than the images there are
    (a blank cell only where an image of a shown index is missing)."""
    from PIL import ImageDraw, ImageFont

    if not images:
        return None
    c = min(cell, size) if size >= 16 else size
    cols = min(cols, 1 + max(k for _, k in images))
    font = ImageFont.load_default()
    strip = 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n in labels) \
        if labels else 0
    grid = np.full((rows * c, strip + cols * c, 3), 255, dtype=np.uint8)
    for (r, k), a in images.items():
        if r < rows and k < cols:
            grid[r * c:(r + 1) * c, strip + k * c:strip + (k + 1) * c] = \
                np.asarray(Image.fromarray(a).resize((c, c), Image.BICUBIC))
    if labels:
        img = Image.fromarray(grid)
        draw = ImageDraw.Draw(img)
        for r, name in enumerate(labels[:rows]):
            top, bottom = draw.textbbox((0, 0), name, font=font)[1::2]
            draw.text((4, r * c + (c - (bottom - top)) // 2 - top), name, fill=(0, 0, 0), font=font)
        grid = np.asarray(img)
    return grid
