"""Style building blocks shared by the prompt methods and Contrastive-Prompt learning.

* the style dictionary (package data ``prompts/data/styles.txt`` or a user's file),
* statistics of the token-embedding table ``W`` (per-dimension mean / std, median row norm),
* Random-Prompt and Mix-Prompt style vectors (docs/method.md section 3),
* a features-only encoder path that drops the padding (exact for CLIP's causal text transformer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dfkd.errors import UserError

from .encoder import StyleTextEncoder, StyleVectors, T5StyleEncoder
from .templates import read_lines

PACKAGE_DICTIONARY = "package:prompts/data/styles.txt"


def load_style_dictionary(path: str | None = None) -> list[str]:
    """The style words: package data by default, else ``path`` (one word or phrase per line, ``#`` comments)."""
    words = read_lines("styles" if path is None else None, path,
                       f"style dictionary '{path}' does not exist; fix prompts.style_dictionary or remove it")
    dupes = sorted({w for w in words if words.count(w) > 1})
    if len(words) < 2 or dupes:
        where = path or PACKAGE_DICTIONARY
        raise UserError(f"style dictionary '{where}' needs at least 2 distinct words (duplicates: {dupes[:3]})")
    return words


@dataclass
class EmbeddingStats:
    """Statistics of ``W`` over ordinary tokens: ``mean``/``std`` ``(d,)`` float32, ``median_norm`` a float."""

    mean: torch.Tensor
    std: torch.Tensor
    median_norm: float
    #: several text encoders (:class:`~prompts.families.PipelineTextEncoder`): each member's segment width and
    #: median row norm; a rescaled vector scales each segment to its own encoder's norm
    splits: tuple[int, ...] = ()
    norms: tuple[float, ...] = ()

    @classmethod
    @torch.no_grad()
    def of(cls, encoder: StyleTextEncoder, words: Sequence[str] | None = None) -> EmbeddingStats:
        """Over every ordinary token (``words=None``), or over the token rows of ``words`` only. With several
        text encoders, each member's statistics side by side."""
        members = getattr(encoder, "members", None)
        if members is not None:
            parts = [cls.of(m, words) for m in members]
            norms = tuple(p.median_norm for p in parts)
            return cls(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]),
                       float(np.median(norms)), tuple(p.mean.numel() for p in parts), norms)
        if words is None:
            ids = encoder.ordinary_token_ids().to(encoder.device)
        else:
            ids = torch.tensor(sorted({i for w in words for i in encoder.tokenizer(w, add_special_tokens=False).input_ids}),
                               device=encoder.device)
        rows = encoder.embedding_table[ids].float()
        return cls(rows.mean(0).cpu(), rows.std(0).cpu(), float(rows.norm(dim=-1).median()))

    @classmethod
    def for_config(cls, cfg, encoder: StyleTextEncoder) -> EmbeddingStats:
        """The rows ``cfg.random_rows`` names: ``vocabulary`` (all ordinary tokens) or ``dictionary`` (the
        style dictionary's tokens: rows a small, caption-trained encoder has certainly trained)."""
        return cls.of(encoder, load_style_dictionary(cfg.style_dictionary) if cfg.random_rows == "dictionary" else None)


def random_styles(stats: EmbeddingStats, count: int, n_tokens: int, seed: int, rescale: bool = False) -> torch.Tensor:
    """Random-Prompt: ``(count, n, d)`` float32 vectors ``s ~ N(mean, diag(std^2))`` (CPU, numpy-seeded).

    With ``rescale`` every row is scaled to the median row norm of ``W`` (each encoder's segment to its own).
    """
    z = np.random.default_rng(seed).standard_normal((count, n_tokens, stats.mean.numel()))
    s = stats.mean + stats.std * torch.from_numpy(z).float()
    if rescale:  # one encoder is one segment at the median row norm
        splits, norms = (list(stats.splits), stats.norms) if stats.splits else ([s.shape[-1]], (stats.median_norm,))
        s = torch.cat([seg * (norm / seg.norm(dim=-1, keepdim=True)) for seg, norm in zip(s.split(splits, dim=-1), norms)],
                      dim=-1)
    return s


def mix_weights(num_words: int, choices: Sequence[int], alpha: float, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """Mix-Prompt draw: ``m`` uniform in ``choices`` (capped at ``num_words``), ``m`` word indices without
    replacement, and Dirichlet(``alpha``) weights (each >= 0, summing to 1)."""
    m = min(int(rng.choice(list(choices))), num_words)
    idx = rng.choice(num_words, size=m, replace=False)
    lam = rng.dirichlet([alpha] * m)
    return [int(i) for i in idx], [float(x) for x in lam]


class WordEmbeddings:
    """``e(w)`` for dictionary words, computed once: ``table`` ``(V_words, d)`` float32 on CPU."""

    def __init__(self, encoder: StyleTextEncoder, words: Sequence[str]):
        self.words = list(words)
        with torch.no_grad():
            self.table = torch.stack([encoder.word_embedding(w) for w in self.words]).float().cpu()

    def mix(self, idx: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
        """``(d,)`` float32: ``sum_i weights[i] * e(words[idx[i]])``."""
        w = torch.tensor(list(weights), dtype=torch.float64)
        return (w[:, None] * self.table[list(idx)].double()).sum(0).float()


def style_features(encoder: StyleTextEncoder, templates: str | Sequence[str], class_names: Sequence[str | None] | None,
                   styles: StyleVectors | torch.Tensor) -> torch.Tensor:
    """Pooled, normalised features ``(B, D)`` of templates whose ``{style}`` slot holds ``styles`` ``(B, n, d)``.

    Same result as ``encoder.encode(...).features`` but runs only up to the longest prompt instead of
    all 77 positions: CLIP's text transformer is causal and pools at the EOS token, so the padding
    after it cannot change the feature (T5, which reads its padding, runs in full). Differentiable w.r.t.
    tensor ``styles``.
    """
    vectors = encoder.check_styles(styles)
    members = getattr(encoder, "members", None)
    if members is not None:  # several encoders: each member's features of its own segment, joined
        return encoder.features([style_features(m, templates, class_names, part)
                                 for m, part in zip(members, encoder.split(vectors))])
    if isinstance(encoder, T5StyleEncoder):  # bidirectional and run without a mask: its padding counts
        return encoder.encode(templates, class_names, vectors).features
    batch = vectors.shape[0]
    templates = [templates] * batch if isinstance(templates, str) else list(templates)
    names = list(class_names) if class_names is not None else [None] * batch
    ids, mask = encoder.tokenize(templates, names, vectors.shape[1])
    length = int((ids == encoder.eos_id).int().argmax(dim=1).max()) + 1
    rows = vectors.to(encoder.device).reshape(-1, encoder.embedding_dim)
    # the encoder's own placeholder overwrite and transformer run, on the trimmed ids
    with encoder._overwrite(mask[:, :length], rows):
        return encoder._run(ids[:, :length]).features


def text_features(encoder: StyleTextEncoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``(B, D)`` normalised features of plain strings, without gradients."""
    with torch.no_grad():
        return torch.cat([encoder.encode_text(list(texts[i:i + batch_size])).features
                          for i in range(0, len(texts), batch_size)])


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    """Mean of ``1 - cos(x_i, x_j)`` over pairs ``i != j`` of ``features`` ``(N, D)``; 0 for identical rows."""
    f = nn.functional.normalize(features.float(), dim=-1)
    n = f.shape[0]
    if n < 2:
        return 0.0
    sim = f @ f.t()
    return float((1.0 - sim).sum() / (n * (n - 1)))
