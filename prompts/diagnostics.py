"""Text-level diagnostics of a prompt method (``dfkd prompts show``), before any image is generated.

* **diversity**: mean pairwise cosine distance between the style-only features ``f(T_style(style))``
  of ``K`` styles the method draws (``K = prompts.contrastive.num_styles``: for ``contrastive``, its
  whole bank);
* **class consistency**: zero-shot accuracy of the styled prompt features of ``K`` prompts per class
  against the plain class features ``f(plain_template(c))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .encoder import STYLE_SLOT
from .methods import PromptMethod, PromptRecord
from .styles import load_style_dictionary, mean_pairwise_cosine_distance, style_features, text_features

#: the implicit style of a prompt without any (``plain``: "a photo of a dog")
IMPLICIT_STYLE = "photo"


@torch.no_grad()
def _features(method: PromptMethod, records: Sequence[PromptRecord], template_of, batch_size: int = 256) -> torch.Tensor:
    """``(B, D)`` features of ``records``: vector styles through the placeholder path, text styles as text.

    ``template_of(record)`` gives ``(template, class_name or None, text)`` to encode.
    """
    out: list[torch.Tensor | None] = [None] * len(records)
    vec = [i for i, r in enumerate(records) if r.style_vector is not None]
    txt = [i for i, r in enumerate(records) if r.style_vector is None]
    for chunk in (vec[i:i + batch_size] for i in range(0, len(vec), batch_size)):
        specs = [template_of(records[i]) for i in chunk]
        styles = torch.stack([records[i].style_vector for i in chunk])
        feats = style_features(method.encoder, [s[0] for s in specs], [s[1] for s in specs], styles).cpu()
        for i, f in zip(chunk, feats):
            out[i] = f
    if txt:
        for i, f in zip(txt, text_features(method.encoder, [template_of(records[i])[2] for i in txt]).cpu()):
            out[i] = f
    return torch.stack(out)


def style_only_features(method: PromptMethod, records: Sequence[PromptRecord]) -> torch.Tensor:
    """``(B, D)``: each record's style alone in ``prompts.contrastive.style_template``."""
    t = method.cfg.contrastive.style_template

    def spec(r: PromptRecord):
        word = r.style_text if r.style_text is not None else IMPLICIT_STYLE
        return t, None, t.replace(STYLE_SLOT, word)

    return _features(method, records, spec)


def diversity(method: PromptMethod, num_styles: int, label: int = 0) -> float:
    """Mean pairwise cosine distance of the style-only features of ``num_styles`` records of ``label``."""
    records = [method.record(label, i) for i in range(num_styles)]
    return mean_pairwise_cosine_distance(style_only_features(method, records))


def class_consistency(method: PromptMethod, per_class: int) -> float:
    """Zero-shot accuracy of ``per_class`` styled prompts per class against the plain class features."""
    records = [method.record(c, i) for c in range(len(method.classes)) for i in range(per_class)]
    plain = text_features(method.encoder, [method.plain_text(c) for c in range(len(method.classes))]).cpu()
    # features of the full prompts (what conditions the generator)
    pred = (_features(method, records, lambda r: (r.template, r.class_name, r.text)) @ plain.t()).argmax(-1)
    return float((pred == torch.tensor([r.label for r in records])).float().mean())


def nearest_words(method: PromptMethod, records: Sequence[PromptRecord], top: int = 3) -> list[list[str]]:
    """For each record, the ``top`` style-dictionary words whose style-only features are closest
    (cosine) to the record's: a reading aid for vector styles."""
    words = load_style_dictionary(method.cfg.style_dictionary)
    t = method.cfg.contrastive.style_template
    vocab = text_features(method.encoder, [t.replace(STYLE_SLOT, w) for w in words]).cpu()
    sims = style_only_features(method, records) @ vocab.t()
    return [[words[j] for j in row] for row in sims.topk(min(top, len(words)), dim=-1).indices.tolist()]


def describe(method: PromptMethod, samples: int) -> dict:
    """Sample prompts per class, diversity and class consistency of ``method`` (JSON-ready)."""
    k = method.cfg.contrastive.num_styles
    return {
        "method": method.name,
        "encoder": method.encoder.identity.to_dict(),
        "seed": method.seed,
        "num_styles": k,
        "diversity": diversity(method, k),
        "class_consistency": class_consistency(method, k),
        "chance": 1.0 / len(method.classes),
        "samples": {name: _samples(method, [method.record(c, i) for i in range(samples)])
                    for c, name in enumerate(method.classes)},
    }


def _samples(method: PromptMethod, records: list[PromptRecord]) -> list[dict]:
    out = [{"text": r.text, "style": r.style_json(), "seed": r.seed} for r in records]
    vec = [i for i, r in enumerate(records) if r.style_vector is not None]
    for i, near in zip(vec, nearest_words(method, [records[i] for i in vec]) if vec else []):
        out[i]["nearest_words"] = near
    return out
