"""The text side of each text-to-image family: which encoders read the prompt, and how their outputs
become the ``prompt_embeds`` and ``pooled_prompt_embeds`` a diffusers pipeline takes.

==========  ===============================================  =============================================
family      text encoders (pipeline components)               what the pipeline takes
==========  ===============================================  =============================================
``sd``      CLIP (``text_encoder``)                           last hidden state ``(B, 77, h)``
``sdxl``    CLIP-L (``text_encoder``), CLIP-G with            penultimate hidden states side by side
            projection (``text_encoder_2``)                   ``(B, 77, h1 + h2)``; pooled: CLIP-G's projection
``sd3``     CLIP-L, CLIP-G (both with projection), T5        ``[pad(CLIP-L | CLIP-G) ; T5]`` along the
            (``text_encoder_3``)                              sequence ``(B, 77 + T, t5)``; pooled: both projections
``flux``    CLIP-L (``text_encoder``), T5 (``text_encoder_2``) T5's states ``(B, T, t5)``; pooled: CLIP-L's pooler
==========  ===============================================  =============================================

These are the rules of diffusers' own ``encode_prompt`` for each pipeline (clip_skip unset), so a text
prompt encoded here drives the pipeline exactly as the prompt string would.

Style pseudo-tokens go into every encoder that reads the prompt, T5 included. A style vector is one
row per token of width ``d_1 + d_2 (+ d_3)``: the concatenation of one segment per encoder's token
embedding. One style index therefore means one style in every encoder, and Contrastive-Prompt learns
the segments jointly: a style's feature is the concatenation of the encoders' normalised features,
scaled to unit length, so the cosine similarity the losses use is the mean of the encoders' cosine
similarities (docs/method.md section 2.1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfkd.errors import UserError

from .encoder import EncoderIdentity, StyleTextEncoder, StyleVectors, T5StyleEncoder, TextEncoding

#: the prompt length every T5 member reads (SD 3's default; FLUX.1-schnell's limit, and enough for any template)
T5_TOKENS = 256


@dataclass(frozen=True)
class Member:
    """One text encoder of a family: its pipeline components, its kind and the hidden layer the family reads."""

    encoder: str  #: component name, e.g. ``text_encoder_2``
    tokenizer: str
    kind: str  #: ``clip`` or ``t5``
    hidden_layer: int = -1  #: ``-2``: the penultimate layer's output (SDXL, SD 3)


FAMILIES: dict[str, tuple[Member, ...]] = {
    "sd": (Member("text_encoder", "tokenizer", "clip"),),
    "sdxl": (Member("text_encoder", "tokenizer", "clip", -2), Member("text_encoder_2", "tokenizer_2", "clip", -2)),
    "sd3": (Member("text_encoder", "tokenizer", "clip", -2), Member("text_encoder_2", "tokenizer_2", "clip", -2),
            Member("text_encoder_3", "tokenizer_3", "t5")),
    "flux": (Member("text_encoder", "tokenizer", "clip"), Member("text_encoder_2", "tokenizer_2", "t5")),
}

#: the transformers classes a pipeline's ``model_index.json`` may name for a text encoder or tokenizer
_ALLOWED = {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "CLIPTokenizer", "CLIPTokenizerFast",
            "T5Tokenizer", "T5TokenizerFast"}


def family_of(components: dict[str, str | None], pipeline_class: str = "") -> str:
    """The family of a pipeline from ``{component: transformers class name or None}`` (its ``model_index.json``) and
    its class name (an SD 3 pipeline saved without its T5 is still SD 3, and is refused for the missing encoder)."""
    if components.get("text_encoder_3") or pipeline_class.startswith("StableDiffusion3"):
        return "sd3"
    if pipeline_class.startswith("Flux"):
        return "flux"
    second = components.get("text_encoder_2")
    if second:
        return "flux" if second.startswith("T5") else "sdxl"
    return "sd"


def family_of_index(index: dict) -> str:
    """The family of the pipeline whose ``model_index.json`` is ``index``."""
    return family_of(index_classes(index), str(index.get("_class_name", "")))


def family_of_pipeline(pipe) -> str:
    """The family of a loaded pipeline, from its text-encoder components."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return family_of({n: type(getattr(pipe, n)).__name__ if getattr(pipe, n, None) is not None else None
                      for n in names}, type(pipe).__name__)


def pipeline_index(path: str) -> dict | None:
    """``model_index.json`` of a pipeline folder or of a Hub id in the local cache; None when there is none."""
    p = Path(path)
    file: str | Path | None = p / "model_index.json"
    if not p.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(path, "model_index.json")
        except Exception:  # noqa: BLE001 - anything odd (an id that is no repo name): not a pipeline
            file = None
    if not isinstance(file, (str, Path)) or not Path(file).is_file():
        return None
    try:
        return json.loads(Path(file).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def index_classes(index: dict) -> dict[str, str | None]:
    """``{component: class name}`` of a ``model_index.json``."""
    out = {}
    for name, value in index.items():
        if isinstance(value, list) and len(value) == 2:
            out[name] = value[1]
    return out


class PipelineTextEncoder:
    """The text encoders of an SDXL, SD 3 or FLUX pipeline behind :class:`StyleTextEncoder`'s interface.

    Style vectors are ``(B, n, d_1 + ... + d_k)``: segment ``i`` fills the style slot of member ``i``.
    ``encode`` returns the family's ``prompt_embeds`` as ``hidden_states``, its ``pooled_prompt_embeds`` as
    ``pooled``, and as ``features`` the members' normalised features side by side, divided by ``sqrt(k)``
    (unit length: a cosine similarity between two such features is the mean of the members' similarities).
    """

    def __init__(self, family: str, members: Sequence[StyleTextEncoder], model_id: str):
        if family not in FAMILIES or family == "sd":
            raise ValueError(f"PipelineTextEncoder drives sdxl, sd3 or flux, not {family!r}")
        self.family, self.members = family, list(members)
        self.splits = [m.embedding_dim for m in self.members]
        self.identity = EncoderIdentity(model_id, sum(self.splits))

    @classmethod
    def from_components(cls, family: str, components: dict, model_id: str) -> StyleTextEncoder | PipelineTextEncoder:
        """The family's encoder(s) from ``components`` (name -> loaded model or tokenizer): a plain
        :class:`StyleTextEncoder` for ``sd``."""
        members = []
        for m in FAMILIES[family]:
            model, tok = components.get(m.encoder), components.get(m.tokenizer)
            if model is None or tok is None:
                raise UserError(f"pipeline '{model_id}' ({family}) has no {m.encoder} or {m.tokenizer}; every text "
                                "encoder that reads the prompt must be present (style tokens go into each): use the "
                                "pipeline as published, with all its text encoders")
            members.append(T5StyleEncoder(model, tok, model_id, max_tokens=T5_TOKENS) if m.kind == "t5"
                           else StyleTextEncoder(model, tok, model_id, hidden_layer=m.hidden_layer))
        return members[0] if family == "sd" else cls(family, members, model_id)

    @classmethod
    def from_pipeline(cls, pipe, model_id: str) -> StyleTextEncoder | PipelineTextEncoder:
        family = family_of_pipeline(pipe)
        names = {n for m in FAMILIES[family] for n in (m.encoder, m.tokenizer)}
        return cls.from_components(family, {n: getattr(pipe, n, None) for n in names}, model_id)

    @classmethod
    def load(cls, model_id: str, index: dict, *, device: str | torch.device, dtype: torch.dtype,
             trust_remote_code: bool) -> StyleTextEncoder | PipelineTextEncoder:
        """Load every text encoder and tokenizer of the pipeline whose ``model_index.json`` is ``index`` (through
        :meth:`StyleTextEncoder.load`, which decides the defaults: CPU, fp32, no remote code)."""
        import transformers

        from dfkd.models import load_pretrained

        classes = index_classes(index)
        family = family_of_index(index)
        components = {}
        for m in FAMILIES[family]:
            for name, what in ((m.encoder, "text encoder"), (m.tokenizer, "tokenizer")):
                cls_name = classes.get(name)
                if cls_name is None:  # saved without it: from_components names what is missing
                    continue
                if cls_name not in _ALLOWED:
                    raise UserError(f"pipeline '{model_id}' names {cls_name!r} for its {name}; dfkd reads CLIP and T5 "
                                    "text encoders only")
                kwargs = ({"torch_dtype": dtype, "trust_remote_code": trust_remote_code} if what == "text encoder"
                          else {})
                obj = load_pretrained(getattr(transformers, cls_name), model_id, what=f"{what} ({name})",
                                      subfolder=name, **kwargs)
                components[name] = obj.to(device).eval() if what == "text encoder" else obj
        return cls.from_components(family, components, model_id)

    # ------------------------------------------------------------------ StyleTextEncoder's interface
    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def embedding_dim(self) -> int:
        return self.identity.embedding_dim

    def word_embedding(self, word: str) -> torch.Tensor:
        """``(d_1 + ... + d_k,)``: each member's ``e(word)`` side by side."""
        return torch.cat([m.word_embedding(word).to(self.device) for m in self.members])

    def check_styles(self, styles: StyleVectors | torch.Tensor) -> torch.Tensor:
        return StyleTextEncoder.check_styles(self, styles)  # the same identity and shape checks

    def split(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """``(B, n, sum d_i)`` -> one ``(B, n, d_i)`` per member."""
        return list(vectors.split(self.splits, dim=-1))

    def encode(self, templates: str | Sequence[str], class_names: Sequence[str | None] | None = None,
               styles: StyleVectors | torch.Tensor | Sequence[str] | None = None) -> TextEncoding:
        """As :meth:`StyleTextEncoder.encode`; tensor styles are split into one segment per member."""
        if styles is None or (isinstance(styles, (list, tuple)) and all(isinstance(s, str) for s in styles)):
            return self.combine([m.encode(templates, class_names, styles) for m in self.members])
        parts = self.split(self.check_styles(styles))
        return self.combine([m.encode(templates, class_names, p) for m, p in zip(self.members, parts)])

    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        return self.combine([m.encode_text(texts) for m in self.members])

    def features(self, encodings: Sequence[torch.Tensor]) -> torch.Tensor:
        """The joint feature of the members' normalised features ``(B, D_i)``: side by side, over ``sqrt(k)``."""
        return torch.cat([f.float() for f in encodings], dim=-1) / math.sqrt(len(encodings))

    def combine(self, encs: Sequence[TextEncoding]) -> TextEncoding:
        """The family's ``prompt_embeds`` and ``pooled_prompt_embeds`` from the members' encodings (module table)."""
        feats = self.features([e.features for e in encs])
        if self.family == "sdxl":
            hidden = torch.cat([encs[0].hidden_states, encs[1].hidden_states], dim=-1)
            return TextEncoding(hidden, feats, encs[1].pooled)
        if self.family == "sd3":
            clip = torch.cat([encs[0].hidden_states, encs[1].hidden_states], dim=-1)
            t5 = encs[2].hidden_states
            clip = nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            return TextEncoding(torch.cat([clip, t5.to(clip.dtype)], dim=-2), feats,
                                torch.cat([encs[0].pooled, encs[1].pooled], dim=-1))
        return TextEncoding(encs[1].hidden_states, feats, encs[0].pooled)  # flux
