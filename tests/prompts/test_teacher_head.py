"""The CLIP teacher and its zero-shot head (shared by synth and distill)."""

import numpy as np
import torch
from fixtures import clip_pixels_by_hand, clip_text_weights_by_hand

from prompts.teacher import ClipTeacher
from prompts.templates import load_templates
from prompts.zeroshot import class_text_features


def test_templates_ship_and_have_one_slot():
    openai = load_templates("openai_80")
    short = load_templates("short_7")
    assert len(openai) == 80 and len(set(openai)) == 80 and len(short) == 7
    assert set(short) <= set(openai)
    assert all(t.count("{}") == 1 for t in openai)


def test_zero_shot_head_matches_definition_and_is_cached(tmp_path):
    teacher = ClipTeacher.load("tiny:clip")
    classes = ["dog", "giraffe", "guitar"]
    templates = load_templates("short_7")
    head = teacher.set_classes(classes, "short_7", cache_dir=tmp_path)
    cached = list(tmp_path.glob("zeroshot-*.safetensors"))
    assert len(cached) == 1

    # t_c = normalised mean over ALL templates of normalised text features, by hand with transformers
    manual = clip_text_weights_by_hand(classes, templates)
    assert torch.allclose(head.weights, manual, atol=1e-5)
    assert torch.allclose(head.weights.norm(dim=-1), torch.ones(3), atol=1e-5)
    first_only = clip_text_weights_by_hand(classes, templates[:1])
    assert not torch.allclose(manual, first_only, atol=1e-3)  # so the check above tells an ensemble from one template

    images = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = teacher.image_features(images)
        logits = teacher(images)
    assert feats.shape == (4, 16) and torch.allclose(feats.norm(dim=-1), torch.ones(4), atol=1e-5)
    scale = teacher.model.logit_scale.exp().item()
    assert torch.allclose(logits, scale * feats @ manual.t(), atol=1e-4)

    # second build reads the cache (same weights) and does not write another file
    mtime = cached[0].stat().st_mtime_ns
    again = ClipTeacher.load("tiny:clip").set_classes(classes, "short_7", cache_dir=tmp_path)
    assert torch.equal(again.weights, head.weights) and cached[0].stat().st_mtime_ns == mtime
    # other classes or templates -> another cache entry
    teacher.set_classes(classes[:2], "short_7", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("zeroshot-*.safetensors"))) == 2


def test_teacher_is_frozen_and_differentiable_wrt_pixels():
    teacher = ClipTeacher.load("tiny:clip")
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    teacher.image_features(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_user_templates_with_other_braces_are_text(tmp_path):
    """A template file may hold braces besides the class slot; they stay literal text."""
    path = tmp_path / "templates.txt"
    path.write_text("a {style} photo of a {}.\n# a comment\n\na drawing of a {} {0}\n")
    templates = load_templates(str(path))
    assert templates == ["a {style} photo of a {}.", "a drawing of a {} {0}"]
    teacher = ClipTeacher.load("tiny:clip")
    feats = class_text_features(teacher.text, ["dog"], ["a {style} photo of a {}."])
    plain = teacher.text.encode_text(["a {style} photo of a dog."]).features
    assert torch.allclose(feats, plain, atol=1e-6)


def _smooth_image(size: int, seed: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: a few low-frequency waves (resampling filters agree closely on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    waves = [0.5 + 0.4 * np.sin(2 * np.pi * (a * xx + b * yy) + c) for a, b, c in rng.uniform(0.3, 1.2, (3, 3))]
    return (np.stack(waves, -1) * 255).round().astype(np.uint8)


def test_preprocess_matches_clip_image_processor():
    """The teacher's own resize + CLIP mean/std equal transformers' CLIPImageProcessor of the same model:
    exactly at CLIP's input size, within resampling differences for a larger image."""
    teacher = ClipTeacher.load("tiny:clip")
    size = teacher.image_size
    native = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    larger = _smooth_image(2 * size, seed=1)
    for image, atol in ((native, 1e-5), (larger, 0.03)):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        expected = clip_pixels_by_hand([image])
        assert teacher.preprocess(x).shape == expected.shape
        assert (teacher.preprocess(x) - expected).abs().max() < atol
