"""The digits kit (dfkd/digits): ids, caching by recipe, and the real from_pretrained layouts, built with the
smoke profile (tiny budgets: the models are meaningless, their shapes and wiring are real)."""

from __future__ import annotations

import json

import pytest
import torch

from dfkd import digits
from dfkd.errors import UserError
from dfkd.models import resolve_model_id


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Every kit model built once with the smoke profile into a module-wide cache."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("digits-cache")
    mp.setenv("DFKD_CACHE", str(cache))
    mp.setenv(digits.PROFILE_ENV, "smoke")
    folders = {n: resolve_model_id(f"digits:{n}") for n in ("sd", "vqgan", "clip-demo")}  # sd builds clip, vae
    yield cache / "digits", folders
    mp.undo()


def test_every_kit_id_builds_once_and_loads_with_from_pretrained(kit):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, VQModel
    from transformers import CLIPModel

    root, folders = kit
    for name in digits.NAMES:
        assert [p.name for p in root.glob(f"{name}-*-smoke") if p.name.count("-") == name.count("-") + 2] == \
            [f"{name}-{digits.key(name)}-smoke"], name
    clip = CLIPModel.from_pretrained(resolve_model_id("digits:clip"))
    assert clip.config.vision_config.image_size == 32
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.unet.config.cross_attention_dim == clip.config.text_config.hidden_size
    vq = VQModel.from_pretrained(folders["vqgan"])
    assert 2 ** (len(vq.config.block_out_channels) - 1) == 4
    # a second resolve finds the cached folder and trains nothing
    stamp = (root / folders["vqgan"].split("/")[-1] / "dfkd_recipe.json").stat().st_mtime_ns
    assert resolve_model_id("digits:vqgan") == folders["vqgan"]
    assert (root / folders["vqgan"].split("/")[-1] / "dfkd_recipe.json").stat().st_mtime_ns == stamp


def test_kit_cards_say_what_data_each_model_saw(kit):
    root, _ = kit
    for name in digits.NAMES:
        meta = json.loads((root / f"{name}-{digits.key(name)}-smoke" / "dfkd_recipe.json").read_text())
        assert "MNIST training digits" in meta["data_seen"] and "MNIST test digits" in meta["not_seen"]
        assert meta["summary"]["seconds"] > 0
    sd = json.loads((next(root.glob("sd-*-smoke")) / "dfkd_recipe.json").read_text())
    assert set(sd["parents"]) == {"clip", "vae"}


def test_sd_text_encoder_is_the_teachers_text_tower(kit):
    """The pipeline's text encoder gives the same hidden states as the teacher's own text tower."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    _, folders = kit
    clip = CLIPModel.from_pretrained(resolve_model_id("digits:clip")).eval()
    text = CLIPTextModel.from_pretrained(folders["sd"], subfolder="text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(folders["sd"], subfolder="tokenizer")
    ids = tok(["a photo of the digit seven", "red on blue three"], padding="max_length", max_length=32,
              return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(text(input_ids=ids).last_hidden_state,
                                   clip.text_model(input_ids=ids).last_hidden_state)


def test_training_captions_are_encoded_as_the_style_encoder_encodes_prompts(kit):
    from dfkd.digits.generators import encode_captions, text_tower
    from prompts.encoder import StyleTextEncoder

    text, tok = text_tower(resolve_model_id("digits:clip"))
    enc = StyleTextEncoder.load(kit[1]["sd"])
    caps = ["a photo of a seven", "", "thick sketch 4"]
    torch.testing.assert_close(encode_captions(text, tok, caps), enc.encode_text(caps).hidden_states)


def test_autoencoders_record_their_latent_scale(kit):
    """scaling_factor = 1 / std of the latents (SD's convention), so N(0, 1) / scaling_factor is a latent."""
    from diffusers import VQModel

    vq = VQModel.from_pretrained(kit[1]["vqgan"])
    assert vq.config.scaling_factor != pytest.approx(0.18215) and vq.config.scaling_factor > 0


def test_key_depends_on_recipe_and_parents(monkeypatch):
    monkeypatch.setenv(digits.PROFILE_ENV, "smoke")
    smoke = {n: digits.key(n) for n in digits.NAMES}
    monkeypatch.setenv(digits.PROFILE_ENV, "full")
    full = {n: digits.key(n) for n in digits.NAMES}
    assert all(smoke[n] != full[n] for n in digits.NAMES) and len(set(full.values())) == len(full)


def test_unknown_kit_ids_and_profiles_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError, match="unknown digits model 'digits:nope'; valid: digits:clip"):
        resolve_model_id("digits:nope")
    monkeypatch.setenv(digits.PROFILE_ENV, "huge")
    with pytest.raises(UserError, match="not a digits kit profile"):
        digits.key("clip")


def test_render_pool_is_captioned_and_held_out_digits_are_separate():
    from dfkd.digits.generators import HELD_OUT, render_pool

    pool = render_pool(40, 0, photo_fraction=0.25, progress=False)
    assert pool.images.shape == (40, 3, 32, 32) and pool.images.dtype == torch.uint8
    assert sum(c == "" for c in pool.captions) >= 10  # the photo crops carry no caption
    assert pool.batch(torch.arange(4)).min() >= -1 and pool.batch(torch.arange(4)).max() <= 1
    held = render_pool(8, 0, held_out=True, progress=False)
    assert held.images.shape == (8, 3, 32, 32) and HELD_OUT == 1000
