"""Constants and small builders shared by the prompts tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from prompts.config import ContrastiveConfig, PromptsConfig

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
#: the article English writes before a class name that does not take "a"
AN = {"elephant": "an"}
ENCODERS = {"clip": ("tiny:clip", "clip"), "sd": ("tiny:sd", "pipeline")}



def small_contrastive(**overrides) -> PromptsConfig:
    """A PromptsConfig whose Contrastive-Prompt learning takes about a second on the tiny encoders."""
    c = {"num_styles": 8, "steps": 12, "class_batch": 7, "checkpoint_every": 5, **overrides}
    return PromptsConfig(contrastive=ContrastiveConfig(**c))


def unit(*shape: int, seed: int) -> torch.Tensor:
    """Seeded standard-normal rows, L2-normalised along the last dimension."""
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)
