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

from . import schema

PREVIEW_NAME = "preview.png"


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    """``(n, D)`` normalised features -> mean of ``1 - cos`` over distinct pairs (0 for n < 2)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    sim = features @ features.t()
    return float((1 - sim).sum() / (n * (n - 1)))


def vendi_score(features: torch.Tensor) -> float:
    """``(n, D)`` normalised features -> Vendi score in ``[1, n]`` (1: all identical; n: orthogonal)."""
    x = features.double()
    n = x.shape[0]
    gram = x.t() @ x / n if x.shape[1] < n else x @ x.t() / n  # same non-zero eigenvalues
    eig = torch.linalg.eigvalsh(gram).clamp_min(0)
    eig = eig[eig > 1e-12]
    return float(torch.exp(-(eig * eig.log()).sum()))


def iter_shards(dataset_dir: Path, columns: Sequence[str]):
    """Yield pyarrow tables of ``columns``, one committed shard at a time (never the whole set in memory)."""
    import pyarrow.parquet as pq

    for path in sorted((dataset_dir / schema.DATA_DIR).glob("*.parquet")):
        yield pq.read_table(path, columns=list(columns))


def decode(image_bytes: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> ``(H, W, 3)`` uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))


@torch.no_grad()
def compute_diagnostics(dataset_dir: Path, cfg, teacher, batch_size: int = 64) -> dict:
    """Counts, agreement, diversity and the preview grid of the dataset in ``dataset_dir``."""
    s = cfg.synth
    C = len(cfg.classes)
    feats: list[list[torch.Tensor]] = [[] for _ in range(C)]
    correct, conf_sum, counts = [0] * C, [0.0] * C, [0] * C
    preview: dict[tuple[int, int], np.ndarray] = {}
    for table in iter_shards(dataset_dir, ["image", "label", "index", "teacher_confidence"]):
        d = table.to_pydict()
        for start in range(0, len(d["label"]), batch_size):
            sl = slice(start, start + batch_size)
            arrays = [decode(im["bytes"]) for im in d["image"][sl]]
            labels, indices = d["label"][sl], d["index"][sl]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255).to(teacher.device)
            f = teacher.image_features(x)
            pred = teacher.logits_from_features(f).argmax(-1).cpu().tolist()
            for a, lab, idx, p, fi, c in zip(arrays, labels, indices, pred, f.cpu(), d["teacher_confidence"][sl]):
                counts[lab] += 1
                correct[lab] += int(p == lab)
                conf_sum[lab] += float(c)
                if idx < s.diagnostics_max_per_class:
                    feats[lab].append(fi)
                if idx < s.preview_per_class:
                    preview[(lab, idx)] = a
    per_class = {}
    for c, name in enumerate(cfg.classes):
        fc = torch.stack(feats[c]) if feats[c] else torch.zeros(0, 1)
        per_class[name] = {
            "count": counts[c],
            "agreement": correct[c] / counts[c] if counts[c] else 0.0,
            "mean_confidence": conf_sum[c] / counts[c] if counts[c] else 0.0,
            "mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(fc) if len(fc) else 0.0,
            "vendi_score": vendi_score(fc) if len(fc) else 0.0,
        }
    total = sum(counts)
    grid = preview_grid(preview, C, s.preview_per_class, s.store_resolution)
    if grid is not None:
        from PIL import Image

        Image.fromarray(grid).save(dataset_dir / PREVIEW_NAME)
    return {
        "rows": total,
        "teacher_agreement": sum(correct) / total if total else 0.0,
        "mean_confidence": sum(conf_sum) / total if total else 0.0,
        "mean_pairwise_cosine_distance": _mean(v["mean_pairwise_cosine_distance"] for v in per_class.values()),
        "vendi_score": _mean(v["vendi_score"] for v in per_class.values()),
        "filter": _filter_counts(dataset_dir),
        "per_class": per_class,
        "preview": PREVIEW_NAME if grid is not None else None,
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _filter_counts(dataset_dir: Path) -> dict:
    from .writer import shard_info

    total: dict[str, int] = {}
    for path in sorted((dataset_dir / schema.DATA_DIR).glob("*.parquet")):
        for k, v in shard_info(path).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def preview_grid(images: dict[tuple[int, int], np.ndarray], rows: int, cols: int, size: int,
                 cell: int = 64) -> np.ndarray | None:
    """``(rows * c, cols * c, 3)`` uint8: row = class, column = index (blank where missing)."""
    if not images:
        return None
    from PIL import Image

    c = min(cell, size) if size >= 16 else size
    grid = np.full((rows * c, cols * c, 3), 255, dtype=np.uint8)
    for (r, k), a in images.items():
        if r < rows and k < cols:
            grid[r * c:(r + 1) * c, k * c:(k + 1) * c] = np.asarray(Image.fromarray(a).resize((c, c), Image.BICUBIC))
    return grid
