"""The style-token encoder, the zero-shot head and the CLIP teacher against their definitions
(method.md sections 2 and 5), each computed independently with transformers / PyTorch."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import clip_pixels_by_hand, clip_text_weights_by_hand
from safetensors import safe_open
from transformers import CLIPModel, CLIPTextModelWithProjection

from dfkd.errors import UserError
from dfkd.models import CLIP_MEAN, CLIP_STD, resolve_model_id
from prompts.encoder import (
    EncoderIdentity,
    StyleTextEncoder,
    StyleVectors,
    _ordinary_token_id,
)
from prompts.teacher import ClipTeacher
from prompts.templates import load_templates
from prompts.zeroshot import build_zero_shot_head, default_cache_dir

CLIP_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]


# ---------------------------------------------------------------------------------------------- helpers
def _by_hand(encoder: StyleTextEncoder, texts, max_length: int = 77):
    """(hidden states, normalised pooled features) of ``texts`` with transformers alone: the tokenizer's own
    padding, the model's own forward (CLIPModel: ``get_text_features``; CLIPTextModel: ``pooler_output``)."""
    ids = encoder.tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                            return_tensors="pt").input_ids
    model = encoder.model
    with torch.no_grad():
        if isinstance(model, CLIPModel):
            hidden = model.text_model(input_ids=ids).last_hidden_state
            pooled = model.get_text_features(input_ids=ids)
            pooled = getattr(pooled, "pooler_output", pooled)
        else:
            out = model(input_ids=ids)
            hidden = out.last_hidden_state
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return hidden, torch.nn.functional.normalize(pooled.float(), dim=-1)


def _assert_encodes_like(encoding, encoder, texts, max_length: int = 77):
    hidden, feats = _by_hand(encoder, texts, max_length)
    assert encoding.hidden_states.shape == hidden.shape
    torch.testing.assert_close(encoding.hidden_states, hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoding.features, feats, atol=1e-5, rtol=1e-5)


def _rows(encoder: StyleTextEncoder, words: str) -> torch.Tensor:
    """``(n, d)``: the token-embedding rows of ``words`` (its tokens, no special ones)."""
    ids = encoder.tokenizer(words, add_special_tokens=False).input_ids
    return encoder.embedding_table[torch.tensor(ids)].detach().clone()


def _with_tokenizer(encoder: StyleTextEncoder, tokenizer, **attrs) -> StyleTextEncoder:
    """The same frozen model with ``tokenizer`` (a spare copy of its own) given CLIP's defaults, then ``attrs``."""
    attrs = {"model_max_length": 77, "pad_token": encoder.tokenizer.pad_token, **attrs}
    for key, value in attrs.items():
        setattr(tokenizer, key, value)
    return StyleTextEncoder(encoder.model, tokenizer, encoder.identity.model_id)


def _link(folder, source, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(os.path.join(source, name))
    return folder


@pytest.fixture(scope="module")
def teacher(_tiny_cache) -> ClipTeacher:
    return ClipTeacher.load("tiny:clip")


@pytest.fixture(scope="module")
def spare_tokenizer(encoders):
    """A copy of tiny:clip's tokenizer that tests may change (``_with_tokenizer`` resets it first)."""
    return copy.deepcopy(encoders["clip"].tokenizer)


@pytest.fixture(params=["clip", "sd"])
def encoder(request, encoders) -> StyleTextEncoder:
    """These definitions are of one CLIP text tower (the teacher's and SD's); the encoders of SDXL, SD 3 and FLUX
    are checked against diffusers' own ``encode_prompt`` in test_families.py."""
    return encoders[request.param]


@pytest.fixture(scope="module")
def meta_encoder(_tiny_cache) -> StyleTextEncoder:
    """tiny:clip's text encoder loaded onto the ``meta`` device: shows where tensors are put without a GPU."""
    return StyleTextEncoder.load("tiny:clip", kind="clip", device="meta")


# ---------------------------------------------------------------------------------------------- text path
def test_style_words_fill_the_style_and_class_slots_as_text(encoder):
    """Style strings are written into ``{style}``, class names into ``{class_name}``, one template or one per prompt."""
    out = encoder.encode("a {style} photo of a {class_name}.", ["dog", "horse"], ["sketch", "oil painting"])
    _assert_encodes_like(out, encoder, ["a sketch photo of a dog.", "a oil painting photo of a horse."])
    assert torch.allclose(out.features.norm(dim=-1), torch.ones(2), atol=1e-5)
    out = encoder.encode(["{style} art of a {class_name}", "a {class_name}, {style}"], ["guitar", "house"],
                         ("cartoon", "mosaic"))
    _assert_encodes_like(out, encoder, ["cartoon art of a guitar", "a house, mosaic"])


def test_templates_without_a_style_slot_need_no_styles(encoders):
    enc = encoders["clip"]
    _assert_encodes_like(enc.encode("a photo of a {class_name}.", ["dog", "elephant", "person"]), enc,
                         ["a photo of a dog.", "a photo of a elephant.", "a photo of a person."])
    _assert_encodes_like(enc.encode("a photo of a dog."), enc, ["a photo of a dog."])  # one prompt, not one per char
    _assert_encodes_like(enc.encode(["a photo of a dog.", "a horse.", "a house"]), enc,
                         ["a photo of a dog.", "a horse.", "a house"])
    _assert_encodes_like(enc.encode_text(["a photo of a dog.", "a horse."]), enc, ["a photo of a dog.", "a horse."])


def test_text_longer_than_the_context_is_truncated(encoders):
    enc = encoders["clip"]
    texts = ["a photo of a " + "very " * 90 + "big dog", "a dog"]
    out = enc.encode_text(texts)
    assert out.hidden_states.shape[1] == 77
    _assert_encodes_like(out, enc, texts)


def test_a_slot_without_its_value_is_a_user_error(encoders):
    enc = encoders["clip"]
    with pytest.raises(UserError, match="style"):
        enc.encode("a {style} photo of a {class_name}.", ["dog"])
    with pytest.raises(UserError, match="class"):
        enc.encode("a {style} photo of a {class_name}.", None, ["sketch"])
    with pytest.raises(UserError, match="class"):
        enc.encode("a photo of a {class_name}.")


# ---------------------------------------------------------------------------------------------- vector path
def test_style_vectors_equal_their_words_written_as_text(encoder):
    """Placing a word's embedding rows in the style slot is writing the word: for n = 2 rows, K = 3 prompts,
    the class slot before or after the style slot, a tensor or StyleVectors, with or without class names."""
    words = ["oil painting", "pencil drawing", "pixel art"]
    vectors = torch.stack([_rows(encoder, w) for w in words])
    assert vectors.shape == (3, 2, encoder.embedding_dim)
    templates = ["a {style} photo of a {class_name}.", "a {class_name} in {style} style", "{style} of a {class_name}"]
    out = encoder.encode(templates, ["dog", "guitar", "house"], vectors)
    _assert_encodes_like(out, encoder, ["a oil painting photo of a dog.", "a guitar in pencil drawing style",
                                        "pixel art of a house"])
    expected = [f"a {w} picture" for w in words]
    _assert_encodes_like(encoder.encode("a {style} picture", styles=vectors), encoder, expected)
    _assert_encodes_like(encoder.encode("a {style} picture", styles=StyleVectors(vectors, encoder.identity)),
                         encoder, expected)
    one_token = torch.cat([_rows(encoder, w) for w in ["sketch", "cartoon", "watercolor"]])  # (K, d): n = 1
    _assert_encodes_like(encoder.encode("a {style} picture", styles=one_token), encoder,
                         ["a sketch picture", "a cartoon picture", "a watercolor picture"])


def test_gradients_reach_the_style_vectors_not_the_encoder(encoder):
    gen = torch.Generator().manual_seed(0)
    styles = torch.randn(2, 1, encoder.embedding_dim, generator=gen, requires_grad=True)
    feats = encoder.encode("a {style} photo of a {class_name}", ["dog", "horse"], styles).features
    (feats * torch.randn(feats.shape, generator=gen)).sum().backward()  # not .sum(): a LayerNorm output sums to ~0
    assert styles.grad is not None and (styles.grad.abs().sum(-1) > 0).all()
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_tokenize_puts_placeholders_exactly_in_the_style_slot(encoders):
    """Outside the mask the ids are the tokenizer's own ids of the prompt (padding included); the mask holds
    exactly ``n`` ordinary (non-special) placeholder ids where the style words would be."""
    enc = encoders["clip"]
    word = enc.tokenizer("sketch", add_special_tokens=False).input_ids
    assert len(word) == 1
    templates = ["a {style} photo of a {class_name}.", "{style} {class_name}", "a {class_name} made of {style}"]
    names = ["dog", "elephant", None]
    ids, mask = enc.tokenize(templates, names, 3)
    texts = ["a sketch sketch sketch photo of a dog.", "sketch sketch sketch elephant",
             "a {class_name} made of sketch sketch sketch"]
    expected = enc.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == mask.shape == (3, 77) and mask.dtype == torch.bool
    assert torch.equal(ids[~mask], expected[~mask])
    assert (expected[mask] == word[0]).all() and mask.sum(1).tolist() == [3, 3, 3]
    assert (ids[mask] == enc.placeholder_id).all() and enc.placeholder_id not in enc.tokenizer.all_special_ids


def test_padding_uses_the_tokenizer_pad_token_else_end_of_text(encoders, spare_tokenizer):
    enc = encoders["clip"]
    bang = _with_tokenizer(enc, spare_tokenizer, pad_token="!")
    assert bang.tokenizer.pad_token_id != bang.eos_id
    ids, mask = bang.tokenize(["a {style} dog"], [None], 1)
    expected = bang.tokenizer(["a sketch dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids[~mask], expected[~mask]) and (ids[0, 5:] == bang.tokenizer.pad_token_id).all()
    assert torch.equal(bang.tokenize_text(["a sketch dog"]), expected)
    nopad = _with_tokenizer(enc, spare_tokenizer, pad_token=None)
    ids, _ = nopad.tokenize(["a {style} dog"], [None], 1)
    assert ids[0, 4:].tolist() == [nopad.tokenizer.eos_token_id] * 73


def test_prompt_length_limit_is_the_context_minus_start_and_end(encoders):
    """A body of ``max_length - 2`` tokens fits (with start and end of text), one more is a user error."""
    enc = encoders["clip"]
    fits = enc.tokenize(["{style} " + "dog " * 74], [None], 1)[0]
    assert fits.shape == (1, 77) and fits[0, -1].item() == enc.eos_id
    with pytest.raises(UserError, match="longer than 77"):
        enc.tokenize(["{style} " + "dog " * 75], [None], 1)
    with pytest.raises(UserError, match="longer than 77"):
        enc.tokenize(["{style} {class_name}"], ["dog " * 73], 3)


def test_style_vectors_take_k_by_n_by_d(encoders):
    enc = encoders["clip"]
    d = enc.embedding_dim
    assert StyleVectors(torch.zeros(4, d), enc.identity).vectors.shape == (4, 1, d)
    assert StyleVectors(torch.zeros(4, 2, d), enc.identity).vectors.shape == (4, 2, d)
    for bad in (torch.zeros(4, 2, d + 1), torch.zeros(4, 1, 2, d), torch.zeros(d), torch.zeros(4, d, 3)):
        with pytest.raises(ValueError):
            StyleVectors(bad, enc.identity)
        with pytest.raises(ValueError):
            enc.check_styles(bad)
    assert enc.check_styles(torch.zeros(3, d)).shape == (3, 1, d)
    assert enc.check_styles(torch.zeros(3, 2, d)).shape == (3, 2, d)
    assert enc.check_styles(StyleVectors(torch.zeros(3, 2, d), enc.identity)).shape == (3, 2, d)
    other = StyleVectors(torch.zeros(3, 1, d), EncoderIdentity("tiny:sd", d))
    with pytest.raises(UserError, match="re-learn"):
        enc.check_styles(other)
    with pytest.raises(ValueError, match="3 style vectors for 2 prompts"):
        enc.encode("a {style} {class_name}", ["dog", "horse"], torch.zeros(3, 1, d))


# ---------------------------------------------------------------------------------------------- encoder set-up
def test_context_length_follows_the_tokenizer(encoders, spare_tokenizer):
    """``model_max_length`` sets the padded length; a missing limit or the huge "no limit" sentinel (> 1000)
    means CLIP's 77. Padding after the end of text changes neither the pooled feature nor earlier states."""
    enc = encoders["clip"]
    short = _with_tokenizer(enc, spare_tokenizer, model_max_length=32)
    assert short.max_length == 32
    texts = ["a photo of a dog.", "a sketch of a horse"]
    out = short.encode_text(texts)
    assert out.hidden_states.shape[:2] == (2, 32)
    _, feats = _by_hand(enc, texts)
    torch.testing.assert_close(out.features, feats, atol=1e-5, rtol=1e-5)
    vec = short.encode("a {style} photo", styles=_rows(enc, "sketch")[None])
    assert vec.hidden_states.shape[:2] == (1, 32)
    torch.testing.assert_close(vec.features, _by_hand(enc, ["a sketch photo"])[1], atol=1e-5, rtol=1e-5)
    assert _with_tokenizer(enc, spare_tokenizer, model_max_length=1000).max_length == 1000
    for sentinel in (1001, int(1e30)):
        huge = _with_tokenizer(enc, spare_tokenizer, model_max_length=sentinel)
        assert huge.max_length == 77 and huge.encode_text(["a dog"]).hidden_states.shape[1] == 77
    unset = _with_tokenizer(enc, spare_tokenizer, model_max_length=None)
    assert unset.max_length == 77 and unset.encode("a {style} dog", styles=["sketch"]).hidden_states.shape[1] == 77


def test_placeholder_is_the_preferred_token_or_the_first_ordinary_one(encoders):
    tok = encoders["clip"].tokenizer
    special = set(tok.all_special_ids)
    first_ordinary = min(set(range(len(tok))) - special)
    assert _ordinary_token_id(tok, "*</w>") == tok.convert_tokens_to_ids("*</w>") not in special
    assert _ordinary_token_id(tok, "dog</w>") == tok.convert_tokens_to_ids("dog</w>")
    assert _ordinary_token_id(tok, "no-such-token</w>") == first_ordinary  # CLIP's unknown token is <|endoftext|>
    assert _ordinary_token_id(tok, tok.eos_token) == first_ordinary


def test_sdxl_style_text_encoder_with_projection(encoders):
    """A ``CLIPTextModelWithProjection`` (SDXL's second encoder): hidden states of the transformer, features
    from its projected ``text_embeds``."""
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(encoders["sd"].text_model.config).eval()
    enc = StyleTextEncoder(model, encoders["sd"].tokenizer, "sdxl-like")
    assert enc.projection is model.text_projection and enc.text_model is model.text_model
    texts = ["a sketch of a dog", "a photo of a house"]
    _assert_encodes_like(enc.encode_text(texts), enc, texts)
    assert enc.encode_text(texts).features.shape == (2, model.config.projection_dim)


def test_modules_that_are_not_clip_text_encoders_are_refused(encoders):
    with pytest.raises(TypeError, match="not a transformers CLIP text encoder"):
        StyleTextEncoder(torch.nn.Linear(2, 2), encoders["clip"].tokenizer, "linear")


def test_token_table_statistics_helpers(encoders):
    enc = encoders["sd"]
    special = set(enc.tokenizer.all_special_ids)
    ids = enc.ordinary_token_ids()
    assert ids.tolist() == [i for i in range(enc.embedding_table.shape[0]) if i not in special]
    assert torch.equal(enc.word_embedding("oil painting"), _rows(enc, "oil painting").float().mean(0))
    assert torch.equal(enc.word_embedding("sketch"), _rows(enc, "sketch")[0].float())
    with pytest.raises(UserError, match="tokenizes to nothing"):
        enc.word_embedding("")


# ---------------------------------------------------------------------------------------------- loading
def test_auto_kind_tells_a_pipeline_from_a_clip_model(_tiny_cache):
    sd = StyleTextEncoder.load("tiny:sd")
    clip = StyleTextEncoder.load("tiny:clip")
    assert sd.projection is None and sd.text_model is sd.model and type(sd.model).__name__ == "CLIPTextModel"
    assert isinstance(clip.model, CLIPModel) and clip.projection is clip.model.text_projection
    for enc in (sd, clip):  # the model's own tokenizer: one id per row of the embedding table
        assert len(enc.tokenizer) == enc.embedding_table.shape[0] == enc.text_model.config.vocab_size
    with pytest.raises(ValueError, match="kind"):
        StyleTextEncoder.load("tiny:clip", kind="vision")


def test_hub_ids_are_pipelines_when_their_cached_snapshot_has_model_index(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for repo, files in (("me/pipe", ["model_index.json"]), ("me/clip", ["config.json"])):
        root = tmp_path / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0" * 40)
        for name in files:
            (root / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
            (root / "snapshots" / ("0" * 40) / name).write_text("{}")
    from prompts.families import pipeline_index

    assert pipeline_index("me/pipe") == {}
    assert pipeline_index("me/clip") is None and pipeline_index("me/absent") is None
    assert pipeline_index("not a valid//hub id") is None  # the Hub's id check raises: treated as a CLIP id


def test_load_honours_dtype_and_device(_tiny_cache, meta_encoder):
    for model_id, kind in (("tiny:clip", "clip"), ("tiny:sd", "pipeline")):
        assert StyleTextEncoder.load(model_id, kind=kind, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert meta_encoder.device.type == "meta"
    ids, mask = meta_encoder.tokenize(["a {style} dog"], [None], 1)
    assert ids.device.type == mask.device.type == "meta"
    assert meta_encoder.tokenize_text(["a dog"]).device.type == "meta"


def test_load_errors_name_the_part_that_failed(tmp_path, _tiny_cache):
    missing = str(tmp_path / "missing")
    with pytest.raises(UserError, match="cannot load CLIP model '"):
        StyleTextEncoder.load(missing, kind="clip")
    with pytest.raises(UserError, match="cannot load text encoder '"):
        StyleTextEncoder.load(missing, kind="pipeline")
    with pytest.raises(UserError, match="cannot load teacher CLIP model '"):
        ClipTeacher.load(missing)
    clip_dir, sd_dir = resolve_model_id("tiny:clip"), resolve_model_id("tiny:sd")
    bad_clip = _link(tmp_path / "clip", clip_dir, ["model.safetensors", "config.json", "tokenizer_config.json"])
    (bad_clip / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load tokenizer from"):
        StyleTextEncoder.load(str(bad_clip), kind="clip")
    with pytest.raises(UserError, match="cannot load teacher tokenizer from"):
        ClipTeacher.load(str(bad_clip))
    bad_sd = tmp_path / "sd"
    _link(bad_sd / "text_encoder", os.path.join(sd_dir, "text_encoder"), ["model.safetensors", "config.json"])
    (bad_sd / "tokenizer").mkdir()
    (bad_sd / "tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load tokenizer from"):
        StyleTextEncoder.load(str(bad_sd), kind="pipeline")


# ---------------------------------------------------------------------------------------------- zero-shot head
def test_default_cache_dir_env_then_hf_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DFKD_CACHE")
    assert default_cache_dir() == tmp_path / "hf" / "dfkd-cache"
    monkeypatch.delenv("HF_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dfkd" / "cache"


def test_head_is_cached_in_the_default_dir_with_its_model(tmp_path, monkeypatch, teacher):
    """Without ``cache_dir`` the weights go to the default cache (parents created), tagged with the model id."""
    cache = tmp_path / "a" / "b"
    monkeypatch.setenv("DFKD_CACHE", str(cache))
    head = build_zero_shot_head(teacher.model, teacher.text, ["dog", "horse"], ["a photo of a {}."])
    files = list(cache.glob("zeroshot-*.safetensors"))
    assert len(files) == 1 and head.classes == ["dog", "horse"]
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == {"model": "tiny:clip",  # and the sha256 of the weights, checked when read back
                                "sha256": hashlib.sha256(f.get_tensor("weights").numpy().tobytes()).hexdigest()}
        assert torch.equal(f.get_tensor("weights"), head.weights)
    assert not list(cache.glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["tensor bytes", "header"])
def test_a_damaged_head_cache_entry_is_computed_again(tmp_path, monkeypatch, teacher, damage):
    """A flipped byte in the cached weights (the file still parses) or in its header (it no longer does): the head is
    computed again, equal to the first one, and the entry replaced."""
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path))
    first = build_zero_shot_head(teacher.model, teacher.text, ["dog", "horse"], ["a photo of a {}."])
    (entry,) = tmp_path.glob("zeroshot-*.safetensors")
    with safe_open(str(entry), "pt") as f:
        good = f.metadata(), f.get_tensor("weights").clone()  # a copy: the tensor may map the file
    raw = bytearray(entry.read_bytes())
    raw[-5 if damage == "tensor bytes" else 10] ^= 0xFF
    entry.write_bytes(bytes(raw))
    again = build_zero_shot_head(teacher.model, teacher.text, ["dog", "horse"], ["a photo of a {}."])
    assert torch.equal(again.weights, first.weights)
    with safe_open(str(entry), "pt") as f:  # replaced (safetensors orders its metadata keys freely: compare them)
        assert f.metadata() == good[0] and torch.equal(f.get_tensor("weights"), good[1])


def test_head_cache_key_follows_local_weight_files(tmp_path, teacher):
    """Retrained weights (another size or mtime of a ``*.safetensors`` or ``*.bin`` file, at any depth) miss the
    cache, each kind on its own; other files of the folder (a README) do not."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "sub" / "pytorch_model.bin").write_bytes(b"y")
    (folder / "README.md").write_text("a model")
    enc = StyleTextEncoder(teacher.model, teacher.text.tokenizer, str(folder))
    cache = tmp_path / "cache"

    def build():
        build_zero_shot_head(teacher.model, enc, ["dog"], ["a photo of a {}."], cache)
        return len(list(cache.glob("zeroshot-*.safetensors")))

    def touch(name, seconds):
        stamp = (folder / name).stat().st_mtime + seconds
        os.utime(folder / name, (stamp, stamp))

    assert build() == 1 and build() == 1
    touch("README.md", 100)
    assert build() == 1
    touch("model.safetensors", 100)
    assert build() == 2
    touch("sub/pytorch_model.bin", 100)
    assert build() == 3
    before = (folder / "model.safetensors").stat().st_mtime
    (folder / "model.safetensors").write_bytes(b"xx")
    os.utime(folder / "model.safetensors", (before, before))  # another size alone
    assert build() == 4


def test_head_of_a_model_without_logit_scale(tmp_path, encoders):
    """A text tower without CLIP's logit scale gets scale 100; the weights are still its normalised features."""
    enc = encoders["sd"]
    head = build_zero_shot_head(enc.model, enc, ["dog", "horse"], ["a photo of a {}.", "a {} drawing"], tmp_path)
    assert head.logit_scale == 100.0
    by_hand = torch.stack([_by_hand(enc, [f"a photo of a {c}.", f"a {c} drawing"])[1].mean(0) for c in ("dog", "horse")])
    torch.testing.assert_close(head.weights, torch.nn.functional.normalize(by_hand, dim=-1), atol=1e-5, rtol=1e-5)
    feats = torch.randn(3, head.weights.shape[1], generator=torch.Generator().manual_seed(0))
    expected = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ head.weights.t()
    torch.testing.assert_close(head(feats), expected)


def test_head_lives_on_the_encoder_device(tmp_path, teacher, meta_encoder):
    build_zero_shot_head(teacher.model, teacher.text, ["dog"], ["a photo of a {}."], tmp_path)
    head = build_zero_shot_head(teacher.model, meta_encoder, ["dog"], ["a photo of a {}."], tmp_path)  # cache hit
    assert head.weights.device.type == "meta"


def test_set_classes_defaults_to_the_80_openai_templates(tmp_path, teacher):
    head = teacher.set_classes(["guitar"], cache_dir=tmp_path)
    manual = clip_text_weights_by_hand(["guitar"], load_templates("openai_80"))
    torch.testing.assert_close(head.weights, manual, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- teacher
def test_teacher_reads_mean_and_std_from_the_model_folder(tmp_path, _tiny_cache):
    """The image processor's mean/std of the folder, else CLIP's."""
    clip_dir = resolve_model_id("tiny:clip")
    custom = _link(tmp_path / "custom", clip_dir, CLIP_FILES)
    config = json.loads((Path(clip_dir) / "processor_config.json").read_text())
    config["image_processor"].update(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    (custom / "processor_config.json").write_text(json.dumps(config))
    plain = _link(tmp_path / "plain", clip_dir, CLIP_FILES)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for folder, mean, std in ((custom, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), (plain, CLIP_MEAN, CLIP_STD)):
        t = ClipTeacher.load(str(folder))
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(t.preprocess(x), (x - m) / s)


def test_teacher_dtype_device_and_identity(_tiny_cache, teacher):
    half = ClipTeacher.load("tiny:clip", dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.preprocess(torch.rand(1, 3, 20, 20)).dtype == torch.bfloat16
    assert ClipTeacher.load("tiny:clip", device="meta").device.type == "meta"
    assert teacher.model_id == "tiny:clip" and teacher.text.identity.model_id == "tiny:clip"
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_logits_need_classes_first(_tiny_cache):
    fresh = ClipTeacher.load("tiny:clip")
    with pytest.raises(RuntimeError, match="set_classes"):
        fresh.logits_from_features(torch.zeros(1, 16))


def test_downsampling_is_antialiased_like_clip_image_processor(teacher):
    """Fine detail (noise) at twice CLIP's size: the teacher's antialiased bicubic resize agrees with the
    processor's PIL resize; without antialiasing or with aligned corners it would not."""
    size = teacher.image_size
    image = np.random.default_rng(0).integers(0, 256, (2 * size, 2 * size, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    diff = (teacher.preprocess(x) - clip_pixels_by_hand([image])).abs()
    assert diff.max() < 0.1 and diff.mean() < 0.02
