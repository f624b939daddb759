"""Prompt methods: definitions of method.md section 3, reproducibility, registry, encoding."""

from __future__ import annotations

import json

import pytest
import torch
from prompts_helpers import AN, CLASSES, ENCODERS, prompt_embeds_shape, segments, small_contrastive

from dfkd.errors import UserError
from prompts.config import PromptsConfig
from prompts.encoder import StyleVectors
from prompts.methods import (
    PROMPT_METHODS,
    PromptMethod,
    create_prompt_method,
    image_seed,
    register_prompt_method,
)
from prompts.styles import EmbeddingStats, load_style_dictionary, style_features

BUILTIN = ["contrastive", "handcrafted", "mix", "plain", "random"]
#: style words that are one token in the CLIP BPE, so e(w) is exactly the word's embedding row
ONE_TOKEN_WORDS = ["photo", "sketch", "watercolor", "cartoon", "origami", "embroidery", "graffiti", "mosaic"]


def make(method: str, encoder, run_dir, seed: int = 0, **cfg) -> PromptMethod:
    prompts = small_contrastive() if method == "contrastive" else PromptsConfig()
    prompts.method = method
    for key, value in cfg.items():
        setattr(prompts, key, value)
    return create_prompt_method(prompts, classes=CLASSES, encoder=encoder, seed=seed, run_dir=run_dir)


def run_dir_for(encoder, learned_run):
    return learned_run[next(k for k, (mid, _) in ENCODERS.items() if mid == encoder.identity.model_id)]


def test_style_dictionary_ships_80_words_that_tokenize(encoders):
    words = load_style_dictionary()
    assert len(words) >= 80 and len(set(words)) == len(words)
    for must in ["photo", "sketch", "oil painting", "watercolor", "cartoon", "clipart", "pencil drawing",
                 "pixel art", "origami", "embroidery", "infrared photo"]:
        assert must in words
    enc = encoders["clip"]
    assert all(enc.tokenizer(w, add_special_tokens=False).input_ids for w in words)


def test_style_dictionary_from_a_file(tmp_path, encoders):
    path = tmp_path / "styles.txt"
    path.write_text("# mine\nsketch\ncartoon\n", encoding="utf-8")
    assert load_style_dictionary(str(path)) == ["sketch", "cartoon"]
    with pytest.raises(UserError, match="does not exist"):
        load_style_dictionary(str(tmp_path / "missing.txt"))
    method = make("handcrafted", encoders["clip"], tmp_path, style_dictionary=str(path))
    assert {method.record(0, i).style_text for i in range(10)} == {"sketch", "cartoon"}


def test_image_seed_is_stable_in_range_and_distinct():
    seeds = {image_seed(0, label, index) for label in range(10) for index in range(100)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(3, 1, 2) == image_seed(3, 1, 2) != image_seed(4, 1, 2)


def test_placeholder_filled_with_word_equals_the_word_as_text(encoder, tmp_path):
    """Mix-Prompt with one word at weight 1 is that word's embedding: encoding it through the
    placeholder must equal encoding the prompt as plain text (hidden states and features)."""
    words = tmp_path / "one_token.txt"
    words.write_text("\n".join(ONE_TOKEN_WORDS), encoding="utf-8")
    method = make("mix", encoder, tmp_path, mix_words=[1], style_dictionary=str(words))
    records = [method.record(label, i) for label in range(len(CLASSES)) for i in range(2)]
    texts = [r.template.replace("{style}", r.style_words[0]).replace("{class_name}", r.class_name) for r in records]
    assert all(r.style_weights == pytest.approx([1.0]) for r in records)
    via_vector, via_text = method.encode(records), encoder.encode_text(texts)
    assert via_vector.hidden_states.shape == (len(records), *prompt_embeds_shape(encoder))
    torch.testing.assert_close(via_vector.hidden_states, via_text.hidden_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_vector.features, via_text.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_vector.pooled, via_text.pooled, atol=1e-5, rtol=1e-5)


def test_trimmed_features_equal_full_encoding(encoder):
    """style_features stops at the longest prompt; the causal encoder makes that exact."""
    styles = torch.randn(5, 2, encoder.embedding_dim, generator=torch.Generator().manual_seed(0)) * 0.02
    names = CLASSES[:5]
    full = encoder.encode("a {style} style image of a {class_name}", names, styles).features
    trimmed = style_features(encoder, "a {style} style image of a {class_name}", names, styles)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_mix_vectors_are_convex_combinations_of_dictionary_embeddings(encoder, tmp_path):
    method = make("mix", encoder, tmp_path, num_style_tokens=2)
    words = set(load_style_dictionary())
    for i in range(60):
        r = method.record(i % len(CLASSES), i)
        lam = torch.tensor(r.style_weights, dtype=torch.float64)
        assert len(r.style_words) in (2, 3) and len(set(r.style_words)) == len(r.style_words)
        assert set(r.style_words) <= words
        assert (lam >= 0).all() and abs(float(lam.sum()) - 1.0) < 1e-9
        expected = sum(w * encoder.word_embedding(word).double() for w, word in zip(lam, r.style_words))
        assert r.style_vector.shape == (2, encoder.embedding_dim)
        torch.testing.assert_close(r.style_vector, expected.float().expand(2, -1), atol=1e-6, rtol=1e-5)
        assert r.text == f"a <style:mix> style image of {AN.get(r.class_name, 'a')} {r.class_name}"


def test_random_vectors_match_the_embedding_table_statistics(encoder, tmp_path):
    method = make("random", encoder, tmp_path)
    all_draws = torch.stack([method.record(i % len(CLASSES), i).style_vector[0] for i in range(3000)]).double()
    for member, draws in segments(encoder, all_draws):  # each text encoder's segment: that encoder's table
        rows = member.embedding_table[member.ordinary_token_ids()].double()
        mu, sigma = rows.mean(0), rows.std(0)
        # per dimension: the sample mean within 5 standard errors, the sample std within 10 %
        assert ((draws.mean(0) - mu).abs() <= 5 * sigma / len(draws) ** 0.5).all()
        assert ((draws.std(0) / sigma - 1).abs() < 0.1).all()


def test_random_rows_dictionary_draws_from_the_dictionary_token_rows(encoder, tmp_path):
    """prompts.random_rows=dictionary: the statistics of the style words' token rows, not the whole table."""
    words = ["red", "blue", "sketch", "oil painting", "pencil"]
    (tmp_path / "words.txt").write_text("\n".join(words))
    method = make("random", encoder, tmp_path, random_rows="dictionary", style_dictionary=str(tmp_path / "words.txt"))
    all_draws = torch.stack([method.record(i % len(CLASSES), i).style_vector[0] for i in range(3000)]).double()
    for member, draws in segments(encoder, all_draws):
        ids = sorted({i for w in words for i in member.tokenizer(w, add_special_tokens=False).input_ids})
        rows = member.embedding_table[torch.tensor(ids)].double()
        sigma = rows.std(0)
        assert ((draws.mean(0) - rows.mean(0)).abs() <= 5 * sigma / len(draws) ** 0.5).all()
        assert ((draws.std(0) / sigma - 1).abs() < 0.1).all()
        # and not the whole table's statistics
        everything = member.embedding_table[member.ordinary_token_ids()].double()
        assert ((draws.std(0) / everything.std(0) - 1).abs() > 0.1).any()


def test_random_rescale_uses_the_median_row_norm(encoder, tmp_path):
    method = make("random", encoder, tmp_path, random_rescale=True, num_style_tokens=3)
    vectors = torch.stack([method.record(0, i).style_vector for i in range(20)])
    for member, seg in segments(encoder, vectors):  # each encoder's segment at that encoder's median row norm
        norms = seg.norm(dim=-1)
        torch.testing.assert_close(norms, torch.full_like(norms, EmbeddingStats.of(member).median_norm))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_is_reproducible_for_a_seed_and_differs_across_seeds(name, encoder, learned_run):
    run_dir = run_dir_for(encoder, learned_run)
    keys = [(label, i) for label in range(len(CLASSES)) for i in range(6)]

    def records(seed):
        method = make(name, encoder, run_dir, seed=seed)
        return [method.record(*k) for k in keys]

    a, b, c = records(0), records(0), records(1)
    for x, y in zip(a, b):
        assert (x.text, x.seed, x.style_json(), x.template) == (y.text, y.seed, y.style_json(), y.template)
        assert (x.style_vector is None) == (y.style_vector is None)
        if x.style_vector is not None:
            assert torch.equal(x.style_vector, y.style_vector)
    assert all(x.seed != z.seed for x, z in zip(a, c))
    if name != "plain":  # plain has no style at all: only its image seeds depend on the seed
        assert [x.style_json() for x in a] != [z.style_json() for z in c]
    assert all(json.loads(x.style_json())["method"] == name for x in a)


def test_records_carry_label_class_and_style_fields(encoder, learned_run):
    run_dir = run_dir_for(encoder, learned_run)
    plain, hand, contrastive = (make(n, encoder, run_dir) for n in ("plain", "handcrafted", "contrastive"))
    r = plain.record(2, 5)
    assert (r.label, r.class_name, r.index, r.text, r.style_vector) == (2, "giraffe", 5, "a photo of a giraffe", None)
    assert r.seed == image_seed(0, 2, 5)
    h = hand.record(1, 0)
    first = "an" if h.style_text[0] in "aeiou" else "a"  # the package dictionary: the first letter decides
    assert h.text == f"{first} {h.style_text} style image of an elephant" and h.style_words == [h.style_text]
    # contrastive cycles through all K learned styles in every block of K images of a class
    k = contrastive.cfg.contrastive.num_styles
    assert sorted(contrastive.record(3, i).style_id for i in range(k, 2 * k)) == list(range(k))
    c = contrastive.record(3, 0)
    assert torch.equal(c.style_vector, contrastive.bank.vectors[c.style_id])
    assert json.loads(c.style_json())["style_id"] == c.style_id and "<style:contrastive-" in c.text


def test_encode_batches_mixed_text_and_vector_records(encoder, tmp_path):
    mix, hand = make("mix", encoder, tmp_path), make("handcrafted", encoder, tmp_path)
    records = [mix.record(0, 0), hand.record(1, 0), mix.record(2, 1), hand.record(3, 1)]
    both = mix.encode(records)
    alone = [mix.encode([r]) for r in records]
    assert both.hidden_states.shape == (4, *prompt_embeds_shape(encoder)) and both.features.shape[0] == 4
    for i, one in enumerate(alone):
        torch.testing.assert_close(both.features[i], one.features[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.hidden_states[i], one.hidden_states[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.features.norm(dim=-1), torch.ones(4))


def test_unknown_method_lists_the_valid_ones(encoders, tmp_path):
    with pytest.raises(UserError) as err:
        make("nope", encoders["clip"], tmp_path)
    assert all(name in str(err.value) for name in BUILTIN)


def test_a_registered_method_is_created_by_name(encoders, tmp_path):
    @register_prompt_method("test_upper")
    class Upper(PromptMethod):
        def record(self, label, index):
            text = f"A PHOTO OF A {self.classes[label].upper()}"
            return self._base(label, index, text, text)

    try:
        method = make("test_upper", encoders["clip"], tmp_path)
        r = method.record(0, 0)
        assert r.method == "test_upper" and r.text == "A PHOTO OF A DOG"
        assert method.encode([r]).features.shape[0] == 1
    finally:
        PROMPT_METHODS.pop("test_upper")


def test_contrastive_needs_its_learned_bank(encoders, tmp_path):
    with pytest.raises(UserError, match="dfkd prompts learn"):
        make("contrastive", encoders["clip"], tmp_path)


def test_contrastive_refuses_a_bank_of_another_encoder(encoders, learned_run):
    with pytest.raises(UserError, match="belong to text encoder 'tiny:clip'"):
        make("contrastive", encoders["sd"], learned_run["clip"])
    with pytest.raises(UserError, match="tokens"):
        make("contrastive", encoders["clip"], learned_run["clip"], num_style_tokens=2)


def test_style_vectors_record_their_encoder(encoders):
    clip, sd = encoders["clip"], encoders["sd"]
    v = StyleVectors(torch.zeros(2, 1, clip.embedding_dim), clip.identity)
    assert clip.check_styles(v).shape == (2, 1, clip.embedding_dim)
    with pytest.raises(UserError):
        sd.check_styles(v)


def test_only_a_method_with_a_learning_step_declares_it():
    """`dfkd run` asks the method (it names none): contrastive learns its styles first, the others need nothing."""
    from prompts.methods import PROMPT_METHODS, method_needs_learning

    assert {n for n in PROMPT_METHODS.names() if method_needs_learning(n)} == {"contrastive"}
