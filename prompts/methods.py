"""Prompt methods (docs/method.md section 3): one :class:`PromptRecord` per image, behind a registry.

=============  ==============================================================================
``plain``       ``plain_template`` ("a photo of a dog"), no style: the baseline
``handcrafted`` a real style word from the dictionary, written into ``template`` as text
``mix``         Mix-Prompt: ``s = sum_i lambda_i e(w_i)``, ``m`` words without replacement, Dirichlet weights
``random``      Random-Prompt: ``s ~ N(mu, diag(sigma^2))`` of the embedding table's ordinary tokens
``contrastive`` Contrastive-Prompt: one of the ``K`` learned vectors (``dfkd prompts learn``), cycled uniformly
=============  ==============================================================================

A record depends on ``(seed, label, index)`` only, so a resumed synthesis regenerates exactly the
missing items. A user adds a method with ``@register_prompt_method("name")`` on a subclass of
:class:`PromptMethod` (listed under ``imports:`` in the config).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dfkd.errors import UserError
from dfkd.registry import Registry
from dfkd.runtime import derive_seed

from .config import PromptsConfig
from .contrastive import load_style_bank
from .encoder import STYLE_SLOT, StyleTextEncoder, StyleVectors, TextEncoding
from .styles import (
    EmbeddingStats,
    WordEmbeddings,
    load_style_dictionary,
    mix_weights,
    random_styles,
)
from .templates import with_articles


@dataclass
class PromptRecord:
    """The prompt of one image (what ``synth`` writes next to it)."""

    label: int
    class_name: str
    index: int  #: the image's index within its class
    method: str
    template: str
    text: str  #: human-readable prompt; a vector style is written as a marker, e.g. "a <style:mix> style image of a dog"
    seed: int  #: per-image generator seed = image_seed(seed, label, index)
    style_vector: torch.Tensor | None = None  #: (n, d) float32 pseudo-token vectors, or None for text styles
    style_words: list[str] | None = None
    style_weights: list[float] | None = None
    style_id: int | None = None  #: contrastive: learned style index
    style_text: str | None = None  #: handcrafted: the style word written as text
    vector_seed: int | None = None  #: random: the seed the vector was drawn with

    def style_json(self) -> str:
        """The style as JSON: words + weights (handcrafted, mix), style id (contrastive), vector seed (random)."""
        data: dict = {"method": self.method}
        if self.style_words is not None:
            data["words"] = self.style_words
            data["weights"] = self.style_weights
        if self.style_id is not None:
            data["style_id"] = self.style_id
        if self.vector_seed is not None:
            data["vector_seed"] = self.vector_seed
        return json.dumps(data, sort_keys=True)


def image_seed(seed: int, label: int, index: int) -> int:
    """The generator seed of image ``index`` of class ``label``: a stable hash, ``0 <= s < 2**63``."""
    return derive_seed("image", seed, label, index)


class PromptMethod:
    """Base class: subclasses implement :meth:`record`; :meth:`encode` batches records through the encoder."""

    name: str = ""
    #: True when the method learns something before synthesis (``dfkd prompts learn``; ``dfkd run`` runs it)
    needs_learning: bool = False

    def __init__(self, cfg: PromptsConfig, *, classes: Sequence[str], encoder: StyleTextEncoder, seed: int,
                 run_dir: Path):
        self.cfg, self.classes, self.encoder = cfg, list(classes), encoder
        self.seed, self.run_dir = int(seed), Path(run_dir)

    @classmethod
    def preflight(cls, cfg: PromptsConfig, run_dir: Path) -> None:
        """Cheap checks (files, settings) before any model is loaded; raise a UserError naming the fix."""

    def record(self, label: int, index: int) -> PromptRecord:
        raise NotImplementedError

    def _base(self, label: int, index: int, template: str, text: str, **style) -> PromptRecord:
        if not 0 <= label < len(self.classes):
            raise IndexError(f"label {label} out of range for {len(self.classes)} classes")
        return PromptRecord(label=label, class_name=self.classes[label], index=index, method=self.name,
                            template=template, text=text, seed=image_seed(self.seed, label, index), **style)

    def _rng(self, label: int, index: int) -> np.random.Generator:
        """The style draw's own stream (independent of the image seed)."""
        return np.random.default_rng(derive_seed("style", self.name, self.seed, label, index))

    def _template(self, label: int, style_word: str | None = None, template: str | None = None) -> str:
        """``template`` (default ``prompts.template``) for class ``label``, its articles fitted to the class name and
        a text ``style_word`` (``prompts.articles``)."""
        template = self.cfg.template if template is None else template
        return with_articles(template, self.classes[label], style_word) if self.cfg.articles else template

    def plain_text(self, label: int) -> str:
        """``plain_template`` filled with class ``label`` (the baseline prompt, "a photo of an elephant")."""
        return self._template(label, template=self.cfg.plain_template).replace("{class_name}", self.classes[label])

    def _text(self, label: int, style: str, style_word: str | None = None) -> str:
        return self._template(label, style_word).replace(STYLE_SLOT, style).replace("{class_name}", self.classes[label])

    @torch.no_grad()
    def encode(self, records: Sequence[PromptRecord]) -> TextEncoding:
        """Hidden states ``(B, L, h)``, normalised features ``(B, D)`` and pooled outputs of ``records``, in order.

        Vector styles go through the placeholder path, text styles through the tokenizer; a batch
        may mix both.
        """
        if not records:
            raise ValueError("encode() needs at least one record")
        vec = [i for i, r in enumerate(records) if r.style_vector is not None]
        txt = [i for i, r in enumerate(records) if r.style_vector is None]
        parts: list[tuple[list[int], TextEncoding]] = []
        if vec:
            styles = StyleVectors(torch.stack([records[i].style_vector for i in vec]), self.encoder.identity)
            parts.append((vec, self.encoder.encode([records[i].template for i in vec],
                                                   [records[i].class_name for i in vec], styles)))
        if txt:
            parts.append((txt, self.encoder.encode_text([records[i].text for i in txt])))
        return _scatter(parts, len(records))


def _scatter(parts: list[tuple[list[int], TextEncoding]], total: int) -> TextEncoding:
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    hidden = first.hidden_states.new_empty((total, *first.hidden_states.shape[1:]))
    feats = first.features.new_empty((total, first.features.shape[1]))
    pooled = None if first.pooled is None else first.pooled.new_empty((total, *first.pooled.shape[1:]))
    for idx, enc in parts:
        hidden[idx] = enc.hidden_states
        feats[idx] = enc.features
        if pooled is not None:
            pooled[idx] = enc.pooled
    return TextEncoding(hidden, feats, pooled)


# ---------------------------------------------------------------------------------------------- registry
PROMPT_METHODS: Registry[type[PromptMethod]] = Registry("prompt method", "prompts.method", "@register_prompt_method")


register_prompt_method = PROMPT_METHODS.register  #: ``@register_prompt_method(name)``: ``prompts.method=name``


def method_needs_learning(name: str) -> bool:
    """Whether prompt method ``name`` has a learning step to run before synthesis."""
    return PROMPT_METHODS.get(name).needs_learning


def preflight_prompt_method(cfg: PromptsConfig, run_dir: Path | str) -> None:
    """Everything about ``cfg.method`` that can be checked before loading a model: the name, then the
    method's own :meth:`PromptMethod.preflight` (e.g. ``contrastive`` needs its learned styles)."""
    PROMPT_METHODS.get(cfg.method).preflight(cfg, Path(run_dir))


def create_prompt_method(cfg: PromptsConfig, *, classes: Sequence[str], encoder: StyleTextEncoder, seed: int,
                         run_dir: Path | str) -> PromptMethod:
    """The configured prompt method (``cfg.method``) for ``classes`` in ``encoder``'s token space."""
    preflight_prompt_method(cfg, run_dir)
    return PROMPT_METHODS[cfg.method](cfg, classes=classes, encoder=encoder, seed=seed, run_dir=Path(run_dir))


@lru_cache(maxsize=64)
def _permutation(size: int, *key: object) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.default_rng(derive_seed("perm", *key)).permutation(size))


# ---------------------------------------------------------------------------------------------- methods
@register_prompt_method("plain")
class PlainPrompt(PromptMethod):
    """``plain_template`` with the class name, no style."""

    def record(self, label: int, index: int) -> PromptRecord:
        return self._base(label, index, self._template(label, template=self.cfg.plain_template), self.plain_text(label))


@register_prompt_method("handcrafted")
class HandcraftedPrompt(PromptMethod):
    """A dictionary word written into ``template`` as text; per class, a seeded permutation of the
    dictionary is cycled, so every word is used equally often."""

    @classmethod
    def preflight(cls, cfg: PromptsConfig, run_dir: Path) -> None:
        load_style_dictionary(cfg.style_dictionary)

    def __init__(self, cfg: PromptsConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.words = load_style_dictionary(cfg.style_dictionary)

    def record(self, label: int, index: int) -> PromptRecord:
        perm = _permutation(len(self.words), self.name, self.seed, label, index // len(self.words))
        word = self.words[perm[index % len(self.words)]]
        return self._base(label, index, self._template(label, word), self._text(label, word, word), style_words=[word],
                          style_weights=[1.0], style_text=word)


@register_prompt_method("mix")
class MixPrompt(PromptMethod):
    """Mix-Prompt: a Dirichlet-weighted convex combination of ``m`` dictionary word embeddings
    (the same mixture fills each of the ``n`` style tokens)."""

    preflight = HandcraftedPrompt.preflight  # the same check: the style dictionary loads

    def __init__(self, cfg: PromptsConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.embeddings = WordEmbeddings(self.encoder, load_style_dictionary(cfg.style_dictionary))

    def record(self, label: int, index: int) -> PromptRecord:
        idx, lam = mix_weights(len(self.embeddings.words), self.cfg.mix_words, self.cfg.mix_alpha, self._rng(label, index))
        vector = self.embeddings.mix(idx, lam).expand(self.cfg.num_style_tokens, -1).clone()
        return self._base(label, index, self._template(label), self._text(label, "<style:mix>"), style_vector=vector,
                          style_words=[self.embeddings.words[i] for i in idx], style_weights=lam)


@register_prompt_method("random")
class RandomPrompt(PromptMethod):
    """Random-Prompt: ``s ~ N(mu, diag(sigma^2))`` of ``W``'s ordinary tokens, or of the style dictionary's
    tokens with ``prompts.random_rows=dictionary`` (optionally rescaled)."""

    def __init__(self, cfg: PromptsConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.stats = EmbeddingStats.for_config(cfg, self.encoder)

    def record(self, label: int, index: int) -> PromptRecord:
        vseed = derive_seed("style", self.name, self.seed, label, index)
        vector = random_styles(self.stats, 1, self.cfg.num_style_tokens, vseed, self.cfg.random_rescale)[0]
        return self._base(label, index, self._template(label), self._text(label, "<style:random>"), style_vector=vector,
                          vector_seed=vseed)


@register_prompt_method("contrastive")
class ContrastivePrompt(PromptMethod):
    """Contrastive-Prompt: the ``K`` learned styles of ``run_dir/prompts/contrastive``; per class a
    seeded permutation of ``0..K-1`` is cycled, so every style is used equally often."""

    needs_learning = True

    @classmethod
    def preflight(cls, cfg: PromptsConfig, run_dir: Path) -> None:
        load_style_bank(run_dir)

    def __init__(self, cfg: PromptsConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.bank = load_style_bank(self.run_dir, self.encoder)
        if self.bank.vectors.shape[1] != cfg.num_style_tokens:
            raise UserError(f"the learned styles in {self.bank.path} have {self.bank.vectors.shape[1]} tokens but "
                            f"prompts.num_style_tokens={cfg.num_style_tokens}; re-run `dfkd prompts learn` or match it")

    def record(self, label: int, index: int) -> PromptRecord:
        k = len(self.bank.vectors)
        style_id = _permutation(k, self.name, self.seed, label, index // k)[index % k]
        return self._base(label, index, self._template(label), self._text(label, f"<style:contrastive-{style_id}>"),
                          style_vector=self.bank.vectors[style_id].clone(), style_id=style_id)
