"""The style-token text encoder: a prompt template whose style slot holds free *vectors*.

Mechanism (docs/method.md section 2, Textual-Inversion style): tokenize the template with ``n``
placeholder tokens in the style slot, run the token-embedding layer, overwrite the placeholder rows
with the style vectors, then run the rest of the real text transformer unchanged (positional
embeddings, layers, final norm, EOS pooling, projection). The overwrite is a forward hook on the
encoder's own ``token_embedding`` module, so any transformers CLIP text tower works: the text tower
of a ``CLIPModel`` (the teacher), a ``CLIPTextModel`` (SD 1.x / 2.x / Turbo) or a
``CLIPTextModelWithProjection`` (SDXL's second encoder); :class:`T5StyleEncoder` does the same for
the T5 encoder of SD 3 and FLUX. Pipelines with several text encoders (SDXL, SD 3, FLUX) are driven
by :class:`prompts.families.PipelineTextEncoder`, which holds one of these per encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dfkd.errors import UserError

STYLE_SLOT = "{style}"
CLASS_SLOT = "{class_name}"


@dataclass(frozen=True)
class EncoderIdentity:
    """Which text encoder a style vector lives in: vectors are only meaningful there."""

    model_id: str
    embedding_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StyleVectors:
    """Style pseudo-token vectors ``(K, n, d)`` tagged with the encoder they belong to."""

    vectors: torch.Tensor
    encoder: EncoderIdentity

    def __post_init__(self) -> None:
        if self.vectors.dim() == 2:
            self.vectors = self.vectors.unsqueeze(1)
        if self.vectors.dim() != 3 or self.vectors.shape[-1] != self.encoder.embedding_dim:
            raise ValueError(f"style vectors must be (K, n, {self.encoder.embedding_dim}), got {tuple(self.vectors.shape)}")


@dataclass
class TextEncoding:
    """``hidden_states``: ``(B, L, hidden)``, what a diffusion UNet or transformer takes as ``prompt_embeds``.
    ``features``: ``(B, D)`` pooled (EOS), projected when the encoder has a projection, L2-normalised.
    ``pooled``: ``(B, P)`` the same pooled output before normalisation (SDXL, SD 3 and FLUX take it as
    ``pooled_prompt_embeds``), or None."""

    hidden_states: torch.Tensor
    features: torch.Tensor
    pooled: torch.Tensor | None = None


def _text_tower(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(text transformer, projection or None) of a CLIPModel / CLIPTextModel(WithProjection)."""
    if hasattr(model, "text_model") and hasattr(model, "text_projection"):
        return model.text_model, model.text_projection  # CLIPModel or CLIPTextModelWithProjection
    if hasattr(model, "embeddings") and hasattr(model.embeddings, "token_embedding"):
        return model, None  # CLIPTextModel
    raise TypeError(f"{type(model).__name__} is not a transformers CLIP text encoder")


class StyleTextEncoder:
    """Encode prompts whose ``{style}`` slot is filled by pseudo-token vectors or by plain text.

    Args:
        model: a ``CLIPModel``, ``CLIPTextModel`` or ``CLIPTextModelWithProjection`` (kept frozen).
        tokenizer: its CLIP tokenizer (``model_max_length`` 77).
        model_id: the id the user gave (Hub id, folder, ``tiny:clip``), recorded in style vectors.
        hidden_layer: ``-1``: ``hidden_states`` are the last layer after the final norm (SD 1.x/2.x); ``-2``: the
            penultimate layer's output, which SDXL and SD 3 read.
    """

    #: the prompt length when the tokenizer was saved without one
    default_length = 77
    #: the token preferred as the placeholder (any ordinary token works: its row is overwritten)
    placeholder_token = "*</w>"

    def __init__(self, model: nn.Module, tokenizer, model_id: str, *, hidden_layer: int = -1):
        self.model = model
        self.text_model, self.projection = self._tower(model)
        self.tokenizer = tokenizer
        self.hidden_layer = int(hidden_layer)
        self.max_length = int(getattr(tokenizer, "model_max_length", self.default_length) or self.default_length)
        if self.max_length > 1000:  # tokenizers saved without a limit report a huge sentinel
            self.max_length = self.default_length
        self.token_embedding: nn.Embedding = self._token_embedding()
        self.identity = EncoderIdentity(model_id, int(self.token_embedding.embedding_dim))
        self.bos_id = tokenizer.bos_token_id
        self.prefix_ids = [] if self.bos_id is None else [self.bos_id]  #: T5 has no BOS
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.placeholder_id = _ordinary_token_id(tokenizer, self.placeholder_token)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _tower(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        return _text_tower(model)

    def _token_embedding(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model_id: str, *, kind: str = "auto", device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> StyleTextEncoder:
        """Load the text encoder of a CLIP model (``kind="clip"``) or of a diffusers pipeline
        (``kind="pipeline"``: its ``text_encoder/`` and ``tokenizer/``); ``"auto"`` looks for ``model_index.json``.
        A pipeline with several text encoders (SDXL, SD 3, FLUX) gives a
        :class:`~prompts.families.PipelineTextEncoder` over all of them."""
        from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

        from dfkd.models import load_pretrained, resolve_model_id

        from .families import PipelineTextEncoder, family_of_index, pipeline_index

        path = resolve_model_id(model_id)
        if kind not in ("auto", "clip", "pipeline"):
            raise ValueError(f"kind must be auto, clip or pipeline, got {kind!r}")
        index = pipeline_index(path)
        if index is not None and family_of_index(index) != "sd" and kind != "clip":
            return PipelineTextEncoder.load(model_id, index, device=device, dtype=dtype,
                                            trust_remote_code=trust_remote_code)
        if kind == "pipeline" or (kind == "auto" and index is not None):
            model = load_pretrained(CLIPTextModel, model_id, what="text encoder", subfolder="text_encoder",
                                    torch_dtype=dtype, trust_remote_code=trust_remote_code)
            tok = load_pretrained(CLIPTokenizer, model_id, what="tokenizer", subfolder="tokenizer")
        else:
            model = load_pretrained(CLIPModel, model_id, what="CLIP model", torch_dtype=dtype,
                                    trust_remote_code=trust_remote_code)
            tok = load_pretrained(CLIPTokenizer, model_id, what="tokenizer")
        return cls(model.to(device).eval(), tok, model_id)

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def embedding_dim(self) -> int:
        return self.identity.embedding_dim

    @property
    def embedding_table(self) -> torch.Tensor:
        """``W``: ``(V, d)`` token-embedding table (a view; do not modify)."""
        return self.token_embedding.weight

    def ordinary_token_ids(self) -> torch.Tensor:
        """Ids of ordinary tokens (all but the special ones), for ``W`` statistics."""
        special = set(self.tokenizer.all_special_ids)
        return torch.tensor([i for i in range(self.embedding_table.shape[0]) if i not in special])

    def word_embedding(self, word: str) -> torch.Tensor:
        """``e(w)``: ``(d,)`` the mean of the token rows of ``word`` (one row for a one-token word)."""
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise UserError(f"style word {word!r} tokenizes to nothing; remove it from the style dictionary")
        return self.embedding_table[torch.tensor(ids, device=self.device)].float().mean(0)

    # ------------------------------------------------------------------ tokenization
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []

    def tokenize(self, templates: Sequence[str], class_names: Sequence[str | None], n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, L)`` with ``n_tokens`` placeholders in the style slot, and their mask ``(B, L)``."""
        rows, masks = [], []
        for template, name in zip(templates, class_names):
            if template.count(STYLE_SLOT) != 1:
                raise UserError(f"template {template!r} must contain the style slot {STYLE_SLOT} exactly once")
            before, after = template.split(STYLE_SLOT)
            fill = {"class_name": name} if name is not None else {}
            pre, post = self._ids(_fmt(before, fill)), self._ids(_fmt(after, fill))
            body = pre + [self.placeholder_id] * n_tokens + post
            if len(body) > self.max_length - len(self.prefix_ids) - 1:
                raise UserError(f"prompt {template!r} with class {name!r} is longer than {self.max_length} tokens; shorten it")
            ids = self.prefix_ids + body + [self.eos_id]
            mask = [False] * (len(self.prefix_ids) + len(pre)) + [True] * n_tokens + [False] * (len(post) + 1)
            pad = self.max_length - len(ids)
            rows.append(ids + [self.pad_id] * pad)
            masks.append(mask + [False] * pad)
        return torch.tensor(rows, device=self.device), torch.tensor(masks, device=self.device)

    def tokenize_text(self, texts: Sequence[str]) -> torch.Tensor:
        out = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        return out.input_ids.to(self.device)

    # ------------------------------------------------------------------ encoding
    @contextlib.contextmanager
    def _overwrite(self, mask: torch.Tensor, rows: torch.Tensor) -> Iterator[None]:
        def hook(module, inputs, output):
            return output.masked_scatter(mask.unsqueeze(-1), rows.to(output.dtype))

        handle = self.token_embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _run(self, input_ids: torch.Tensor) -> TextEncoding:
        penultimate = self.hidden_layer != -1
        out = self.text_model(input_ids=input_ids, output_hidden_states=penultimate, return_dict=True)
        pooled = out.pooler_output
        if self.projection is not None:
            pooled = self.projection(pooled)
        hidden = out.hidden_states[self.hidden_layer] if penultimate else out.last_hidden_state
        return TextEncoding(hidden, nn.functional.normalize(pooled.float(), dim=-1), pooled)

    def check_styles(self, styles: StyleVectors | torch.Tensor) -> torch.Tensor:
        """The raw ``(B, n, d)`` tensor of ``styles``, refusing vectors of another encoder."""
        if isinstance(styles, StyleVectors):
            if styles.encoder != self.identity:
                raise UserError(
                    f"style vectors belong to text encoder {styles.encoder.model_id!r} (dim {styles.encoder.embedding_dim}) "
                    f"but are used with {self.identity.model_id!r} (dim {self.identity.embedding_dim}); "
                    "re-learn them for this encoder (dfkd prompts learn) or switch back"
                )
            styles = styles.vectors
        if styles.dim() == 2:
            styles = styles.unsqueeze(1)
        if styles.dim() != 3 or styles.shape[-1] != self.embedding_dim:
            raise ValueError(f"style vectors must be (B, n, {self.embedding_dim}), got {tuple(styles.shape)}")
        return styles

    def encode(self, templates: str | Sequence[str], class_names: Sequence[str | None] | None = None,
               styles: StyleVectors | torch.Tensor | Sequence[str] | None = None) -> TextEncoding:
        """Encode ``B`` prompts.

        Args:
            templates: one template for all, or one per prompt; ``{class_name}`` and ``{style}`` slots.
            class_names: ``B`` class names (``None`` entries / ``None`` for templates without a class slot).
            styles: ``(B, n, d)`` pseudo-token vectors (``StyleVectors`` or a tensor), or ``B`` style
                strings written into the slot as text, or ``None`` for templates without a style slot.

        Returns: :class:`TextEncoding` with hidden states ``(B, L, hidden)`` and features ``(B, D)``.
        Gradients flow to tensor ``styles``; the encoder's weights stay frozen.
        """
        batch = _batch_size(templates, class_names, styles)
        templates = [templates] * batch if isinstance(templates, str) else list(templates)
        names = list(class_names) if class_names is not None else [None] * batch
        if styles is None or (isinstance(styles, (list, tuple)) and all(isinstance(s, str) for s in styles)):
            words = list(styles) if styles is not None else [None] * batch
            texts = [_render(t, n, w) for t, n, w in zip(templates, names, words)]
            return self._run(self.tokenize_text(texts))
        vectors = self.check_styles(styles)
        if vectors.shape[0] != batch:
            raise ValueError(f"got {vectors.shape[0]} style vectors for {batch} prompts")
        ids, mask = self.tokenize(templates, names, vectors.shape[1])
        rows = vectors.to(self.device).reshape(-1, self.embedding_dim)
        with self._overwrite(mask, rows):
            return self._run(ids)

    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        """Encode plain strings (no slots)."""
        return self._run(self.tokenize_text(texts))


class T5StyleEncoder(StyleTextEncoder):
    """The T5 encoder of SD 3 and FLUX, with the same style slot: pseudo-token rows overwrite the placeholders in
    T5's shared token embedding.

    T5 has no BOS and no pooled output. ``hidden_states`` are the last layer over ``max_length`` tokens, run
    without an attention mask exactly as diffusers runs it; ``features`` are the mean of those states over the
    prompt's tokens (up to and including ``</s>``), L2-normalised. ``max_length`` is at most ``max_tokens``
    (256: SD 3's default and FLUX.1-schnell's limit).
    """

    default_length = 256
    placeholder_token = "\u2581*"

    def __init__(self, model: nn.Module, tokenizer, model_id: str, *, max_tokens: int = 256):
        super().__init__(model, tokenizer, model_id)
        self.max_length = min(self.max_length, int(max_tokens))

    @staticmethod
    def _tower(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        if not hasattr(model, "encoder") or not hasattr(model, "shared"):
            raise TypeError(f"{type(model).__name__} is not a transformers T5 encoder")
        return model, None

    def _token_embedding(self) -> nn.Embedding:
        return self.text_model.encoder.embed_tokens  # the module the stack calls (its weight is tied to ``shared``)

    def _run(self, input_ids: torch.Tensor) -> TextEncoding:
        hidden = self.text_model(input_ids=input_ids, return_dict=True).last_hidden_state
        keep = (input_ids != self.pad_id).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
        return TextEncoding(hidden, nn.functional.normalize(pooled.float(), dim=-1), None)


def _fmt(text: str, fill: dict) -> str:
    return text.replace(CLASS_SLOT, fill["class_name"]) if CLASS_SLOT in text and "class_name" in fill else text


def _render(template: str, class_name: str | None, style: str | None) -> str:
    text = template
    if STYLE_SLOT in text:
        if style is None:
            raise UserError(f"template {template!r} has a {STYLE_SLOT} slot but no style was given")
        text = text.replace(STYLE_SLOT, style)
    if CLASS_SLOT in text:
        if class_name is None:
            raise UserError(f"template {template!r} has a {CLASS_SLOT} slot but no class name was given")
        text = text.replace(CLASS_SLOT, class_name)
    return text


def _batch_size(templates, class_names, styles) -> int:
    for x in (class_names, styles, None if isinstance(templates, str) else templates):
        if x is not None:
            return len(x) if not isinstance(x, (torch.Tensor, StyleVectors)) else (
                x.vectors.shape[0] if isinstance(x, StyleVectors) else x.shape[0])
    return 1


def _ordinary_token_id(tokenizer, preferred: str) -> int:
    """``preferred``'s id, or the first non-special id when the vocabulary lacks it (the unknown token
    of CLIP is ``<|endoftext|>``, which would be mistaken for the EOS that pooling reads)."""
    special = set(tokenizer.all_special_ids)
    token_id = tokenizer.convert_tokens_to_ids(preferred)
    if token_id is None or token_id in special:
        token_id = next(i for i in range(len(tokenizer)) if i not in special)
    return int(token_id)
