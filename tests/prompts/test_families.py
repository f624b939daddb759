"""The text encoders of SDXL, SD 3 and FLUX.1 (prompts/families.py) against diffusers' own ``encode_prompt``, and
the style slot in every one of them, T5 included."""

from __future__ import annotations

import pytest
import torch
from fixtures import diffusers_prompt_embeds, tiny_family_pipeline
from prompts_helpers import CLASSES, segments, small_contrastive

from dfkd.errors import UserError
from prompts.encoder import StyleTextEncoder, T5StyleEncoder
from prompts.families import FAMILIES, PipelineTextEncoder, family_of
from prompts.styles import style_features

FAMILY_IDS = ["sdxl", "sd3", "flux"]
TEXTS = ["a watercolor style image of a dog", "a photo of a house", "a sketch of an elephant playing a guitar"]
TEMPLATE = "a {style} style image of a {class_name}"


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family(request, _tiny_cache):
    """(family name, its PipelineTextEncoder, the same pipeline loaded by diffusers)."""
    return request.param, StyleTextEncoder.load(f"tiny:{request.param}"), tiny_family_pipeline(request.param)


def test_each_tiny_pipeline_loads_as_its_family_with_every_text_encoder(family):
    name, enc, pipe = family
    assert isinstance(enc, PipelineTextEncoder) and enc.family == name
    assert [type(m) for m in enc.members] == [T5StyleEncoder if m.kind == "t5" else StyleTextEncoder
                                              for m in FAMILIES[name]]
    # each member wraps the pipeline's own component of that name, with its own token table
    for member, spec in zip(enc.members, FAMILIES[name]):
        assert type(member.model).__name__ == type(getattr(pipe, spec.encoder)).__name__
        assert torch.equal(member.embedding_table, getattr(pipe, spec.encoder).get_input_embeddings().weight)
    assert enc.identity.embedding_dim == sum(m.embedding_dim for m in enc.members) == enc.embedding_dim


def test_text_prompts_encode_exactly_as_the_pipelines_own_encode_prompt(family):
    """prompt_embeds and pooled_prompt_embeds of plain text equal diffusers' encode_prompt for the family."""
    name, enc, pipe = family
    expected, pooled, _, _ = diffusers_prompt_embeds(pipe, name, TEXTS)
    with torch.no_grad():
        ours = enc.encode_text(TEXTS)
    assert ours.hidden_states.shape == expected.shape and ours.pooled.shape == pooled.shape
    torch.testing.assert_close(ours.hidden_states, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooled, pooled, atol=1e-5, rtol=1e-5)
    # the shapes each family's transformer or UNet is built for
    if name == "sdxl":
        assert ours.hidden_states.shape[-1] == pipe.unet.config.cross_attention_dim
    elif name == "sd3":
        assert ours.hidden_states.shape[1:] == (77 + pipe.tokenizer_3.model_max_length,
                                                pipe.transformer.config.joint_attention_dim)
        assert ours.pooled.shape[-1] == pipe.transformer.config.pooled_projection_dim
    else:
        assert ours.hidden_states.shape[1:] == (pipe.tokenizer_2.model_max_length,
                                                pipe.transformer.config.joint_attention_dim)
        assert ours.pooled.shape[-1] == pipe.transformer.config.pooled_projection_dim


def test_a_word_through_the_style_slot_equals_the_word_as_text_in_every_encoder(family):
    """The placeholder path, with each encoder's own embedding of a one-token word, reproduces the text prompt."""
    _name, enc, _ = family
    vectors = enc.word_embedding("watercolor").expand(2, 1, -1)
    with torch.no_grad():
        via_slot = enc.encode(TEMPLATE, ["dog", "house"], vectors)
        via_text = enc.encode_text(["a watercolor style image of a dog", "a watercolor style image of a house"])
    for a, b in ((via_slot.hidden_states, via_text.hidden_states), (via_slot.pooled, via_text.pooled),
                 (via_slot.features, via_text.features)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_style_words_and_no_style_go_to_every_encoder_as_text(family):
    """``encode`` with style strings (or a template without a style slot) writes them into every encoder's prompt."""
    _, enc, _ = family
    with torch.no_grad():
        words = enc.encode(TEMPLATE, ["dog", "house"], ["watercolor", "sketch"])
        no_style = enc.encode("a photo of a {class_name}", ["dog", "house"])
        texts = enc.encode_text(["a watercolor style image of a dog", "a sketch style image of a house"])
        plain = enc.encode_text(["a photo of a dog", "a photo of a house"])
    for got, want in ((words, texts), (no_style, plain)):
        for a, b in ((got.hidden_states, want.hidden_states), (got.pooled, want.pooled), (got.features, want.features)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _t5_part(name: str, hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 77:] if name == "sd3" else hidden  # sd3: CLIP rows, then T5's; flux: T5 alone


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_t5_pseudo_token_changes_the_t5_output_and_only_it(name, _tiny_cache):
    """A style vector that differs only in its T5 segment changes T5's states (what the transformer reads) and
    leaves the CLIP encoders' outputs as they were; one that differs only in a CLIP segment leaves T5's alone."""
    enc = StyleTextEncoder.load(f"tiny:{name}")
    g = torch.Generator().manual_seed(0)
    base = enc.word_embedding("watercolor").expand(2, 1, -1).clone()
    t5_only, clip_only = base.clone(), base.clone()
    start = sum(enc.splits[:-1])  # T5 is the last member
    t5_only[..., start:] += torch.randn(2, 1, enc.splits[-1], generator=g)
    clip_only[..., :start] += torch.randn(2, 1, start, generator=g) * 0.05
    with torch.no_grad():
        a, b, c = (enc.encode(TEMPLATE, ["dog", "house"], v) for v in (base, t5_only, clip_only))
    assert (_t5_part(name, b.hidden_states) - _t5_part(name, a.hidden_states)).abs().amax() > 1e-3
    torch.testing.assert_close(b.pooled, a.pooled)  # pooled comes from the CLIP encoders only
    if name == "sd3":
        torch.testing.assert_close(b.hidden_states[:, :77], a.hidden_states[:, :77])
    torch.testing.assert_close(_t5_part(name, c.hidden_states), _t5_part(name, a.hidden_states))
    assert (c.pooled - a.pooled).abs().amax() > 1e-4


def test_sdxl_style_segments_fill_clip_l_and_clip_g_separately(_tiny_cache):
    enc = StyleTextEncoder.load("tiny:sdxl")
    base = enc.word_embedding("sketch").expand(1, 1, -1).clone()
    second = base.clone()
    second[..., enc.splits[0]:] += 0.05 * torch.randn(1, 1, enc.splits[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = enc.encode(TEMPLATE, ["dog"], base), enc.encode(TEMPLATE, ["dog"], second)
    h = enc.splits[0]
    torch.testing.assert_close(b.hidden_states[..., :h], a.hidden_states[..., :h])  # CLIP-L unchanged
    assert (b.hidden_states[..., h:] - a.hidden_states[..., h:]).abs().amax() > 1e-4
    assert (b.pooled - a.pooled).abs().amax() > 1e-4  # the pooled embedding is CLIP-G's


def test_joint_features_are_unit_length_and_their_cosine_is_the_mean_of_the_encoders(family):
    _name, enc, _ = family
    styles = torch.randn(4, 2, enc.embedding_dim, generator=torch.Generator().manual_seed(2)) * 0.02
    with torch.no_grad():
        joint = enc.encode(TEMPLATE, CLASSES[:4], styles).features
        per = [m.encode(TEMPLATE, CLASSES[:4], s).features for m, s in segments(enc, styles)]
    torch.testing.assert_close(joint.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(joint @ joint.t(), sum(f @ f.t() for f in per) / len(per), atol=1e-5, rtol=1e-5)
    # the features-only path (contrastive learning) agrees with the full encoding
    torch.testing.assert_close(style_features(enc, TEMPLATE, CLASSES[:4], styles), joint, atol=1e-5, rtol=1e-5)


def test_contrastive_learning_moves_every_encoders_segment_and_lowers_the_loss(_tiny_cache):
    from prompts.contrastive import ContrastiveLearner, learn_fingerprint, learn_styles

    enc = StyleTextEncoder.load("tiny:flux")
    cfg = small_contrastive(steps=20)
    learner = ContrastiveLearner(enc, CLASSES, cfg, seed=0)
    state = learn_styles(learner, None, learn_fingerprint(cfg, CLASSES, 0, enc.identity.model_id), progress=False)
    start = learner.initial_styles()
    assert state.styles.shape == start.shape == (cfg.contrastive.num_styles, cfg.num_style_tokens, enc.embedding_dim)
    for (_, moved), (_, init) in zip(segments(enc, state.styles), segments(enc, start)):
        assert (moved - init).abs().amax() > 1e-3  # CLIP's segment and T5's both learned
    first, last = state.losses[0]["loss"], state.losses[-1]["loss"]
    assert last < first, (first, last)


def test_a_pipeline_text_encoder_is_only_for_the_families_with_several_encoders(_tiny_cache):
    members = StyleTextEncoder.load("tiny:sdxl").members
    for family in ("sd", "sdxl2", "SDXL"):
        with pytest.raises(ValueError, match=f"drives sdxl, sd3 or flux, not '{family}'"):
            PipelineTextEncoder(family, members, "x")
    assert PipelineTextEncoder("sdxl", members, "x").identity.embedding_dim == 64


def test_family_is_read_from_the_text_encoders_a_pipeline_names():
    assert family_of({"text_encoder": "CLIPTextModel"}) == "sd"
    assert family_of({"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}) == "sdxl"
    assert family_of({"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
                      "text_encoder_3": "T5EncoderModel"}) == "sd3"
    assert family_of({"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"}) == "flux"
    assert family_of({"text_encoder": "CLIPTextModel", "text_encoder_2": None}) == "sd"  # a component left out


def test_a_pipeline_naming_another_text_encoder_class_is_refused_in_one_line(tmp_path, _tiny_cache):
    import json
    import shutil

    from dfkd.models import resolve_model_id

    folder = tmp_path / "odd"
    shutil.copytree(resolve_model_id("tiny:flux"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "MyRemoteEncoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="names 'MyRemoteEncoder' for its text_encoder_2; dfkd reads CLIP and T5"):
        StyleTextEncoder.load(str(folder))


def test_an_sd3_pipeline_saved_without_its_t5_is_refused_for_the_missing_encoder(tmp_path, _tiny_cache):
    """SD 3 without T5 is still SD 3 (its transformer reads T5's width): refused in one line, never driven as SDXL."""
    import json
    import shutil

    from dfkd.models import resolve_model_id

    folder = tmp_path / "no-t5"
    shutil.copytree(resolve_model_id("tiny:sd3"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert family_of({"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection"},
                     "StableDiffusion3Pipeline") == "sd3"
    with pytest.raises(UserError, match=r"\(sd3\) has no text_encoder_3 or tokenizer_3; every text encoder"):
        StyleTextEncoder.load(str(folder))
    # the synth backend reads the loaded pipeline rather than its index: SD 3 loaded without T5, as users do to save
    # memory (text_encoder_3=None), is refused there too, before any image
    from diffusers import StableDiffusion3Pipeline

    from synth.backends.diffusion import DiffusionBackend

    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_id("tiny:sd3"), text_encoder_3=None, tokenizer_3=None)
    with pytest.raises(UserError, match=r"\(sd3\) has no text_encoder_3 or tokenizer_3"):
        DiffusionBackend(pipe, "tiny:sd3", steps=1, guidance_scale=0.0, resolution=32)
    # and a component present without its tokenizer (or the reverse) is as missing as both
    enc = StyleTextEncoder.load("tiny:flux")
    parts = {"text_encoder": enc.members[0].model, "tokenizer": enc.members[0].tokenizer,
             "text_encoder_2": enc.members[1].model, "tokenizer_2": None}
    with pytest.raises(UserError, match=r"\(flux\) has no text_encoder_2 or tokenizer_2"):
        PipelineTextEncoder.from_components("flux", parts, "x")
    with pytest.raises(UserError, match=r"\(flux\) has no text_encoder_2 or tokenizer_2"):
        PipelineTextEncoder.from_components("flux", {**parts, "tokenizer_2": enc.members[1].tokenizer,
                                                     "text_encoder_2": None}, "x")


def test_every_text_encoder_loads_in_the_dtype_asked_for(_tiny_cache):
    enc = StyleTextEncoder.load("tiny:sd3", dtype=torch.bfloat16)
    assert [m.dtype for m in enc.members] == [torch.bfloat16] * 3 and enc.dtype == torch.bfloat16
    assert all(not m.model.training for m in enc.members)  # eval mode: T5's dropout off
    assert [m.dtype for m in StyleTextEncoder.load("tiny:sd3").members] == [torch.float32] * 3


def test_a_missing_tokenizer_folder_names_the_component(tmp_path, _tiny_cache):
    import shutil

    from dfkd.models import resolve_model_id

    folder = tmp_path / "broken"
    shutil.copytree(resolve_model_id("tiny:flux"), folder)
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(UserError, match=r"cannot load tokenizer \(tokenizer_2\) from local folder"):
        StyleTextEncoder.load(str(folder))


def test_the_tiny_t5_tokenizer_is_built_offline_and_loads_back(tmp_path):
    from transformers import AutoTokenizer

    from dfkd.tiny import make_t5_tokenizer

    tok = make_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2) and tok.bos_token_id is None
    ids = tok("a watercolor style image of a dog").input_ids
    assert len(ids) == 8 and ids[-1] == 1  # one piece per word, then </s>
    assert tok.convert_ids_to_tokens(ids[1]) == "\u2581watercolor"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("an oil painting of a zebra-like horse").input_ids == tok("an oil painting of a zebra-like horse").input_ids
    assert make_t5_tokenizer().get_vocab() == tok.get_vocab()  # deterministic
