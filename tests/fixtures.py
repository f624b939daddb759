"""The one module tests get tiny models and configs from."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"


def tiny_config(output_dir: str | Path, *overrides: str):
    """The built-in tiny experiment with ``output_dir`` and extra dotted overrides."""
    from dfkd.config import load_config

    return load_config(TINY_YAML, [f"output_dir={output_dir}", *overrides])


def tiny_clip():
    """(CLIPModel, CLIPTokenizer) of tiny:clip, loaded through from_pretrained."""
    from transformers import CLIPModel, CLIPTokenizer

    from dfkd.models import resolve_model_id

    path = resolve_model_id("tiny:clip")
    return CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path)


def tiny_sd_pipeline():
    """The tiny StableDiffusionPipeline of tiny:sd."""
    from diffusers import StableDiffusionPipeline

    from dfkd.models import resolve_model_id

    return StableDiffusionPipeline.from_pretrained(resolve_model_id("tiny:sd"))
