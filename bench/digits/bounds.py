"""The two bounds that make the digits numbers readable, written in the synth dataset schema:

* ``real``: renderings of real MNIST *training* digits in the teacher's styles (what the teacher was
  trained on), balanced per class: the ceiling of a data budget;
* ``noise``: un-optimised random images (the Fourier parameterisation at its random start): the floor.

The same student and distillation recipe as the synthetic settings read them through
``distill.dataset``. Folder names carry what decides the set (kind, size, seed) and :data:`BOUNDS_VERSION`,
because ``datasets`` caches a local folder by its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfkd.digits import data

BOUNDS_VERSION = 1  #: bump when the bound sets change (their folders are reused by name)


def real_images(per_class: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``per_class`` renderings of distinct MNIST *training* digits per class: ``(N, 3, 32, 32)`` in [0, 1]."""
    images, labels = data.load_mnist("train")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    gen = torch.Generator().manual_seed(seed)
    rendered = data.random_style_batch(data.glyphs_from_mnist(images[idx]), gen, data.photo_bank(data.TRAIN_PHOTOS))
    return rendered.images, labels[idx].tolist()


def noise_images(per_class: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Un-optimised images: the digits config's Fourier parameterisation at its random initialisation."""
    from synth.backends.clip_guided import FourierImage

    param = FourierImage(data.SIZE, decay=1.5)
    gens = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(10 * per_class)]
    with torch.no_grad():
        images = param.render(param.init(gens) * 100)  # the init's scale is tiny (grey): spread it over [0, 1]
    return images, [i // per_class for i in range(10 * per_class)]


def write_dataset(root: Path, kind: str, per_class: int, seed: int) -> Path:
    """Write the ``kind`` (real or noise) bound set under ``root``; returns its dataset folder (reused when present)."""
    import datasets

    from dfkd import schema
    from synth.writer import encode_image, to_uint8

    # named by what decides it, not by its pixels: renderings differ in the last bit with the number of threads,
    # and a student distilled from this folder must find the same data when the benchmark runs again
    folder = root / f"{kind}-{per_class}-{seed}-v{BOUNDS_VERSION}"
    if (folder / "data").is_dir():
        return folder
    images, labels = (real_images if kind == "real" else noise_images)(per_class, seed)
    arrays = to_uint8(images, data.SIZE)
    counts = [0] * 10
    index = []
    for y in labels:
        index.append(counts[y])
        counts[y] += 1
    rows = {
        "image": [{"bytes": encode_image(a, "png", 95), "path": None} for a in arrays],
        "label": labels, "index": index, "class_name": [data.CLASSES[y] for y in labels],
        "prompt": [f"{kind} image" for _ in labels], "method": [kind] * len(labels), "style": ["{}"] * len(labels),
        "seed": [seed] * len(labels), "generator": [f"bound:{kind}"] * len(labels),
        "teacher_confidence": [float("nan")] * len(labels),
    }
    ds = datasets.Dataset.from_dict(rows, features=schema.features(data.CLASSES))
    tmp = folder.with_name(folder.name + ".partial")
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(tmp / "data" / "train-00000-of-00001.parquet"))
    tmp.rename(folder)
    return folder
