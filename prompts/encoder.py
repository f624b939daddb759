"""The style-token text encoder: a prompt template whose style slot holds free *vectors*.

Mechanism (docs/method.md section 2, Textual-Inversion style): tokenize the template with ``n``
placeholder tokens in the style slot, run the token-embedding layer, overwrite the placeholder rows
with the style vectors, then run the rest of the real text transformer unchanged (positional
embeddings, layers, final norm, EOS pooling, projection). The overwrite is a forward hook on the
encoder's own ``token_embedding`` module, so any transformers CLIP text tower works: the text tower
of a ``CLIPModel`` (the teacher), a ``CLIPTextModel`` (SD 1.x / 2.x / Turbo) or a
``CLIPTextModelWithProjection`` (SDXL's second encoder).
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
    """``hidden_states``: ``(B, 77, hidden)``, what a diffusion UNet takes as ``prompt_embeds``.
    ``features``: ``(B, D)`` pooled (EOS), projected when the encoder has a projection, L2-normalised."""

    hidden_states: torch.Tensor
    features: torch.Tensor


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
    """

    def __init__(self, model: nn.Module, tokenizer, model_id: str):
        self.model = model
        self.text_model, self.projection = _text_tower(model)
        self.tokenizer = tokenizer
        self.max_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
        if self.max_length > 1000:  # tokenizers saved without a limit report a huge sentinel
            self.max_length = 77
        self.token_embedding: nn.Embedding = self.text_model.embeddings.token_embedding
        self.identity = EncoderIdentity(model_id, int(self.token_embedding.embedding_dim))
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # any ordinary token that is not a special one: its row is overwritten anyway
        self.placeholder_id = _ordinary_token_id(tokenizer, "*</w>")
        for p in self.model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model_id: str, *, kind: str = "auto", device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> StyleTextEncoder:
        """Load the text encoder of a CLIP model (``kind="clip"``) or of a diffusers pipeline
        (``kind="pipeline"``: its ``text_encoder/`` and ``tokenizer/``); ``"auto"`` looks for ``model_index.json``."""
        from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

        from dfkd.models import load_pretrained, resolve_model_id

        path = resolve_model_id(model_id)
        if kind not in ("auto", "clip", "pipeline"):
            raise ValueError(f"kind must be auto, clip or pipeline, got {kind!r}")
        if kind == "pipeline" or (kind == "auto" and _is_pipeline(path)):
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
            if len(body) > self.max_length - 2:
                raise UserError(f"prompt {template!r} with class {name!r} is longer than {self.max_length} tokens; shorten it")
            ids = [self.bos_id] + body + [self.eos_id]
            mask = [False] * (1 + len(pre)) + [True] * n_tokens + [False] * (len(post) + 1)
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
        out = self.text_model(input_ids=input_ids, return_dict=True)
        pooled = out.pooler_output
        if self.projection is not None:
            pooled = self.projection(pooled)
        return TextEncoding(out.last_hidden_state, nn.functional.normalize(pooled.float(), dim=-1))

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


def _is_pipeline(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return (p / "model_index.json").is_file()
    try:  # a Hub id already in the local cache
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(path, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - anything odd: treat as a CLIP model id
        return False


def _ordinary_token_id(tokenizer, preferred: str) -> int:
    """``preferred``'s id, or the first non-special id when the vocabulary lacks it (the unknown token
    of CLIP is ``<|endoftext|>``, which would be mistaken for the EOS that pooling reads)."""
    special = set(tokenizer.all_special_ids)
    token_id = tokenizer.convert_tokens_to_ids(preferred)
    if token_id is None or token_id in special:
        token_id = next(i for i in range(len(tokenizer)) if i not in special)
    return int(token_id)
