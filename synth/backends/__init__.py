"""Generator backends, selected by ``synth.backend``.

A backend is registered with :func:`register_backend` on a class with a ``load`` classmethod::

    @register_backend("my_backend")
    class MyBackend(Backend):
        @classmethod
        def load(cls, cfg, *, teacher, device): ...

and users may register their own from a module listed in the config's ``imports``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dfkd.registry import Registry
from prompts.teacher import DTYPES  # noqa: F401 - re-exported for the backends

_BACKENDS: Registry[type[Backend]] = Registry("backend", "synth.backend", "@register_backend")


class Backend:
    """Turns prompt records into images.

    ``text_encoder``: the :class:`~prompts.encoder.StyleTextEncoder` that style vectors live in.
    ``generator_id``: written into every row's ``generator`` column (``backend:model``).
    """

    name: str = ""
    generator_id: str = ""
    resolution: int = 0

    @classmethod
    def load(cls, cfg, *, teacher, device: torch.device) -> Backend:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def preflight(cls, cfg) -> None:
        """Raise ``UserError`` for a setting of this backend that cannot work, before any model is loaded."""

    @classmethod
    def text_encoder_source(cls, cfg) -> tuple[str, str]:
        """(model id, kind) of the text encoder this backend reads prompts with, so style vectors are learned
        in it (``prompts.encoder=auto``): by default the teacher CLIP's text tower (kind ``clip``)."""
        return cfg.teacher.model, "clip"

    @property
    def text_encoder(self):  # pragma: no cover - interface
        raise NotImplementedError

    def generate(self, records: Sequence, encoding) -> torch.Tensor:  # pragma: no cover - interface
        """``(B, 3, R, R)`` float32 in ``[0, 1]`` for ``B`` records (``encoding`` = their TextEncoding).

        Image ``i`` depends only on ``records[i]`` (its text and its seed), never on its batch mates,
        up to float rounding of batched kernels.
        """
        raise NotImplementedError


register_backend = _BACKENDS.register  #: class decorator ``@register_backend(name)``: ``synth.backend=name``


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; an unknown name is a UserError listing the valid ones."""
    from . import clip_guided, diffusion  # noqa: F401 - the built-in backends register themselves

    return _BACKENDS.get(name)


def image_generators(records: Sequence, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image, seeded from its record (CPU generators: the same noise on any device)."""
    return [torch.Generator(device).manual_seed(int(r.seed)) for r in records]
