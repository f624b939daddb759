"""Constants and small builders shared by the prompts tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from prompts.config import ContrastiveConfig, PromptsConfig

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
#: the article English writes before a class name that does not take "a"
AN = {"elephant": "an"}
ENCODERS = {"clip": ("tiny:clip", "clip"), "sd": ("tiny:sd", "pipeline"), "sdxl": ("tiny:sdxl", "pipeline"),
            "sd3": ("tiny:sd3", "pipeline"), "flux": ("tiny:flux", "pipeline")}



def small_contrastive(**overrides) -> PromptsConfig:
    """A PromptsConfig whose Contrastive-Prompt learning takes about a second on the tiny encoders."""
    c = {"num_styles": 8, "steps": 12, "class_batch": 7, "checkpoint_every": 5, **overrides}
    return PromptsConfig(contrastive=ContrastiveConfig(**c))


def unit(*shape: int, seed: int) -> torch.Tensor:
    """Seeded standard-normal rows, L2-normalised along the last dimension."""
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def segments(encoder, vectors):
    """``[(member encoder, its segment of vectors (..., d_i))]``: one pair for a single text encoder, one per encoder
    of an SDXL, SD 3 or FLUX pipeline."""
    members = getattr(encoder, "members", None)
    return [(encoder, vectors)] if members is None else list(zip(members, encoder.split(vectors)))


def prompt_embeds_shape(encoder) -> tuple[int, int]:
    """``(L, h)`` of the family's prompt_embeds, written out from the encoders' configs (not from an encoding)."""
    family = getattr(encoder, "family", "sd")
    if family == "sd":
        return 77, encoder.text_model.config.hidden_size
    m = encoder.members
    if family == "sdxl":
        return 77, m[0].text_model.config.hidden_size + m[1].text_model.config.hidden_size
    if family == "sd3":
        return 77 + m[2].max_length, m[2].text_model.config.d_model
    return m[1].max_length, m[1].text_model.config.d_model  # flux: T5's states
