"""The zero-shot head: ``p(c|x) = softmax_c(s * <g(x), t_c>)`` (docs/method.md section 5).

``t_c`` is the normalised mean of the class's text features over a template ensemble and ``s`` the
model's logit scale. Class weights are cached on disk per (model, classes, templates), so they are
computed once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dfkd.runtime import atomic_path

from .encoder import StyleTextEncoder


class ZeroShotHead(nn.Module):
    """Linear head over normalised image features: ``(B, D) -> (B, C)`` logits."""

    def __init__(self, weights: torch.Tensor, logit_scale: float, classes: Sequence[str]):
        super().__init__()
        self.register_buffer("weights", nn.functional.normalize(weights.float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.classes = list(classes)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        feats = nn.functional.normalize(image_features.float(), dim=-1)
        return self.logit_scale * feats @ self.weights.t()


@torch.no_grad()
def class_text_features(encoder: StyleTextEncoder, classes: Sequence[str], templates: Sequence[str],
                        batch_size: int = 256) -> torch.Tensor:
    """``(C, D)``: per class, the normalised mean of its normalised template features."""
    out = []
    for name in classes:
        texts = [t.replace("{}", name) for t in templates]  # not format(): other braces stay text
        feats = torch.cat([encoder.encode_text(texts[i:i + batch_size]).features for i in range(0, len(texts), batch_size)])
        out.append(nn.functional.normalize(feats.mean(0), dim=-1))
    return torch.stack(out)


def default_cache_dir() -> Path:
    """``$DFKD_CACHE``, else ``$HF_HOME/dfkd-cache``, else ``~/.cache/dfkd/cache``."""
    from dfkd.models import cache_path

    return cache_path("DFKD_CACHE", "dfkd-cache", "cache")


def _model_fingerprint(model_id: str) -> str:
    """Id plus, for a local folder, the size and mtime of its weight files (so retrained weights miss the cache)."""
    from dfkd.models import resolve_model_id

    path = Path(resolve_model_id(model_id))
    parts = [model_id]
    if path.is_dir():
        for f in sorted(path.rglob("*.safetensors")) + sorted(path.rglob("*.bin")):
            st = f.stat()
            parts.append(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def build_zero_shot_head(model: nn.Module, encoder: StyleTextEncoder, classes: Sequence[str],
                         templates: Sequence[str], cache_dir: str | Path | None = None) -> ZeroShotHead:
    """The zero-shot head of CLIP ``model`` for ``classes``, cached per (model, classes, templates)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    logit_scale = float(model.logit_scale.detach().exp().item()) if hasattr(model, "logit_scale") else 100.0
    key = hashlib.sha256(json.dumps([_model_fingerprint(encoder.identity.model_id), list(classes), list(templates)])
                         .encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"zeroshot-{key}.safetensors"
    def digest(w: torch.Tensor) -> str:
        return hashlib.sha256(w.float().contiguous().numpy().tobytes()).hexdigest()

    weights = None
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                weights, recorded = f.get_tensor("weights"), (f.metadata() or {}).get("sha256")
        except (SafetensorError, OSError):
            recorded = None
        if weights is not None and recorded != digest(weights):
            weights = None  # a damaged cache entry is computed again and replaced
    if weights is None:
        weights = class_text_features(encoder, classes, templates).cpu()
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"weights": weights.contiguous()}, str(tmp),
                      metadata={"model": encoder.identity.model_id, "sha256": digest(weights)})
    return ZeroShotHead(weights, logit_scale, classes).to(encoder.device)
