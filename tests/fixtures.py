"""The one module tests get tiny models and configs from."""

from __future__ import annotations

from pathlib import Path

from prompts.config import TeacherConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"
TINY_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]  # configs/tiny.yaml's
TINY_TEACHER = TeacherConfig(model="tiny:clip", templates="short_7")  #: a ``teacher`` section for prompts.teacher.load_teacher


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


def tiny_family_pipeline(family: str):
    """The tiny SDXL, SD 3 or FLUX.1 pipeline (``tiny:sdxl``, ``tiny:sd3``, ``tiny:flux``), through diffusers' own
    class for that family."""
    import diffusers

    from dfkd.models import resolve_model_id

    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd3": diffusers.StableDiffusion3Pipeline,
           "flux": diffusers.FluxPipeline}[family]
    pipe = cls.from_pretrained(resolve_model_id(f"tiny:{family}"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_prompt_embeds(pipe, family: str, texts, negative: str | None = None):
    """``(prompt_embeds, pooled, negative_embeds, negative_pooled)`` of ``texts`` by the pipeline's own
    ``encode_prompt`` (the negatives None without ``negative``)."""
    import torch

    texts, cfg = list(texts), negative is not None
    with torch.no_grad():
        if family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(texts, None, max_sequence_length=pipe.tokenizer_2.model_max_length)
            return embeds, pooled, None, None
        if family == "sd3":
            neg = None if negative is None else [negative] * len(texts)
            e, ne, p, np_ = pipe.encode_prompt(texts, None, None, do_classifier_free_guidance=cfg, negative_prompt=neg,
                                               max_sequence_length=pipe.tokenizer_3.model_max_length)
            return e, p, ne, np_
        neg = None if negative is None else [negative] * len(texts)
        e, ne, p, np_ = pipe.encode_prompt(texts, do_classifier_free_guidance=cfg, negative_prompt=neg)
        return e, p, ne, np_


# --- a reference CLIP zero-shot classifier computed with transformers alone (no project code past the model id)


def _pooled(out):
    """``get_*_features`` returns a tensor, or (transformers >= 5) an output whose ``pooler_output`` is the projection."""
    return getattr(out, "pooler_output", out)


def clip_text_weights_by_hand(classes, templates):
    """``(C, D)``: per class, the normalised mean over *all* templates of normalised
    ``CLIPModel.get_text_features`` of tiny:clip."""
    import torch

    model, tokenizer = tiny_clip()
    rows = []
    with torch.no_grad():
        for name in classes:
            tokens = tokenizer([t.replace("{}", name) for t in templates], padding=True, return_tensors="pt")
            feats = torch.nn.functional.normalize(_pooled(model.get_text_features(**tokens)).float(), dim=-1)
            rows.append(torch.nn.functional.normalize(feats.mean(0), dim=-1))
    return torch.stack(rows)


def clip_pixels_by_hand(images):
    """``CLIPImageProcessor`` (tiny:clip's own) pixel values of ``images``: a list of ``(H, W, 3)`` uint8 arrays."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from dfkd.models import resolve_model_id

    processor = CLIPImageProcessor.from_pretrained(resolve_model_id("tiny:clip"))
    return processor(images=[Image.fromarray(a) for a in images], return_tensors="pt").pixel_values


def clip_zero_shot_by_hand(images, classes, templates):
    """(logits ``(B, C)``, normalised image features ``(B, D)``) of tiny:clip's zero-shot classifier on
    ``images`` (``(H, W, 3)`` uint8 arrays): processor pixels, ``get_image_features``, logit scale, text weights."""
    import torch

    model, _ = tiny_clip()
    with torch.no_grad():
        feats = _pooled(model.get_image_features(pixel_values=clip_pixels_by_hand(images))).float()
        feats = torch.nn.functional.normalize(feats, dim=-1)
        logits = model.logit_scale.exp().item() * feats @ clip_text_weights_by_hand(classes, templates).t()
    return logits, feats
