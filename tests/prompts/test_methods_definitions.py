"""Prompt methods and style building blocks against their definitions (docs/method.md section 3).

Each synthetic image's :class:`PromptRecord` is written into the dataset, so every field is output:
these tests pin what each method writes, how its draws are seeded by ``(seed, label, index)`` and
its own name, the style dictionary's format, and the style helpers, each against a plain rendering
of the definition.
"""

from __future__ import annotations

import json
import locale

import numpy as np
import pytest
import torch
from prompts_helpers import AN, CLASSES

from dfkd.errors import UserError
from dfkd.runtime import derive_seed
from prompts.config import PromptsConfig
from prompts.contrastive import bank_dir, save_style_bank
from prompts.methods import (
    PROMPT_METHODS,
    PromptMethod,
    create_prompt_method,
    image_seed,
    preflight_prompt_method,
    register_prompt_method,
)
from prompts.styles import (
    EmbeddingStats,
    load_style_dictionary,
    mean_pairwise_cosine_distance,
    random_styles,
    style_features,
    text_features,
)

STYLED = ["handcrafted", "mix", "random", "contrastive"]
METHODS = ["plain", *STYLED]
K = 6  #: styles in the stored Contrastive-Prompt bank
#: one-token words of the CLIP BPE (a small dictionary keeps permutation blocks short)
WORDS = ["sketch", "cartoon", "origami", "mosaic", "graffiti", "watercolor"]


@pytest.fixture(scope="module")
def clip(encoders):
    return encoders["clip"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, clip):
    """A run folder with ``K`` stored (not learned) Contrastive-Prompt styles of tiny:clip."""
    run = tmp_path_factory.mktemp("bank")
    vectors = torch.randn(K, 1, clip.embedding_dim, generator=torch.Generator().manual_seed(0))
    save_style_bank(bank_dir(run), vectors, {"encoder": clip.identity.to_dict(), "seed": 0,
                                             "template": PromptsConfig().template})
    return run


@pytest.fixture(scope="module")
def words_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "words.txt"
    path.write_text("\n".join(WORDS), encoding="utf-8")
    return str(path)


def make(name: str, encoder, run_dir, seed: int = 0, **cfg) -> PromptMethod:
    return create_prompt_method(PromptsConfig(method=name, **cfg), classes=CLASSES, encoder=encoder, seed=seed,
                                run_dir=run_dir)


def style_of(r) -> tuple:
    """Everything a record says about its style."""
    vector = None if r.style_vector is None else r.style_vector.tolist()
    return r.style_text, r.style_words, r.style_weights, r.style_id, r.vector_seed, vector


def expected_text(r) -> str:
    """The prompt of docs/method.md section 3: text styles written in, vector styles as a marker."""
    style = {"handcrafted": r.style_text, "mix": "<style:mix>", "random": "<style:random>",
             "contrastive": f"<style:contrastive-{r.style_id}>"}
    an = AN.get(r.class_name, "a")  # English: "an elephant"
    if r.method == "plain":
        return f"a photo of {an} {r.class_name}"
    # a style word written in takes its own article (the package dictionary has no vowel-initial word said with a
    # consonant sound, so its first letter decides); a vector style's marker keeps "a"
    word = style[r.method]
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word} style image of {an} {r.class_name}"


# ---------------------------------------------------------------------------------------------- records
@pytest.mark.parametrize("name", METHODS)
def test_records_carry_the_image_identity_template_and_prompt_text(name, clip, run_dir):
    method = make(name, clip, run_dir, seed=3)
    for label, index in [(0, 0), (4, 9), (6, 2)]:
        r = method.record(label, index)
        assert (r.label, r.class_name, r.index, r.method) == (label, CLASSES[label], index, name)
        assert r.seed == image_seed(3, label, index)
        an = AN.get(r.class_name, "a")
        first = "an" if name == "handcrafted" and r.style_text[0] in "aeiou" else "a"
        assert r.template == (f"a photo of {an} {{class_name}}" if name == "plain"
                              else f"{first} {{style}} style image of {an} {{class_name}}")
        assert r.text == expected_text(r)
        assert (r.style_vector is None) == (name in ("plain", "handcrafted"))


@pytest.mark.parametrize("name", METHODS)
def test_style_json_lists_what_the_style_was_made_of_with_sorted_keys(name, clip, run_dir):
    r = make(name, clip, run_dir).record(2, 5)
    expected: dict = {"method": name}
    if name == "handcrafted":
        expected |= {"words": [r.style_text], "weights": [1.0]}
    elif name == "mix":
        assert r.style_words and abs(sum(r.style_weights) - 1.0) < 1e-9
        expected |= {"words": r.style_words, "weights": r.style_weights}
    elif name == "contrastive":
        assert r.style_id in range(K)
        expected |= {"style_id": r.style_id}
    elif name == "random":
        assert isinstance(r.vector_seed, int)
        expected |= {"vector_seed": r.vector_seed}
    text = r.style_json()
    assert json.loads(text) == expected
    assert list(json.loads(text)) == sorted(expected)  # one canonical string per style


def test_a_label_outside_the_classes_is_refused_naming_the_class_count(clip, run_dir):
    """``_base``, the helper of every method (a user's too), refuses a label that names no class."""

    @register_prompt_method("test_classless")
    class Classless(PromptMethod):
        def record(self, label, index):
            return self._base(label, index, "a photo", "a photo")

    try:
        method = make("test_classless", clip, run_dir)
        assert method.record(0, 0).class_name == CLASSES[0]
        for bad in (len(CLASSES), -1):
            with pytest.raises(IndexError, match=f"label {bad} out of range for {len(CLASSES)} classes"):
                method.record(bad, 0)
    finally:
        PROMPT_METHODS.pop("test_classless")
    for name in METHODS:
        with pytest.raises(IndexError):
            make(name, clip, run_dir).record(len(CLASSES), 0)


# ---------------------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("name", ["mix", "random"])
def test_every_image_of_every_class_draws_its_own_style(name, clip, run_dir):
    """Mix and Random draw per ``(label, index)``: no two images share a style vector."""
    method = make(name, clip, run_dir)
    records = [method.record(label, index) for label in range(len(CLASSES)) for index in range(4)]
    assert len({tuple(r.style_vector.flatten().tolist()) for r in records}) == len(records)


def _blocks(method, attr: str, size: int, label: int, count: int = 4) -> list[tuple]:
    return [tuple(getattr(method.record(label, b * size + j), attr) for j in range(size)) for b in range(count)]


@pytest.mark.parametrize("name", ["handcrafted", "contrastive"])
def test_permutation_methods_use_every_style_once_per_block_reshuffled_per_class_and_block(name, clip, run_dir,
                                                                                          words_file):
    """Per class a seeded permutation of the styles is cycled: each block of ``V`` consecutive images of a
    class uses every style once, each class has its own order, and each block is shuffled afresh."""
    if name == "handcrafted":
        method, attr, styles = make(name, clip, run_dir, style_dictionary=words_file), "style_text", WORDS
    else:
        method, attr, styles = make(name, clip, run_dir), "style_id", list(range(K))
    per_class = [_blocks(method, attr, len(styles), label) for label in range(len(CLASSES))]
    for blocks in per_class:
        assert all(sorted(b) == sorted(styles) for b in blocks)
        assert len(set(blocks)) > 1
    assert len({tuple(blocks) for blocks in per_class}) == len(CLASSES)


@pytest.mark.parametrize("name", STYLED)
def test_a_method_registered_under_another_name_draws_its_own_styles(name, clip, run_dir):
    """Every style draw is also seeded by the method's name: a user's variant of a built-in method,
    registered under its own name, does not repeat the built-in's styles for the same seed."""
    twin = f"test_twin_{name}"
    register_prompt_method(twin)(type(f"Twin{name.title()}", (PROMPT_METHODS[name],), {}))
    try:
        keys = [(label, index) for label in range(3) for index in range(K)]
        base, other = make(name, clip, run_dir), make(twin, clip, run_dir)
        assert [style_of(base.record(*k)) for k in keys] != [style_of(other.record(*k)) for k in keys]
    finally:
        PROMPT_METHODS.pop(twin)


def test_derived_seeds_spread_over_all_63_bits():
    seeds = [derive_seed("test", i) for i in range(2000)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    for bit in range(63):  # every bit is a fair coin (the 9-sigma band cannot fail by chance)
        assert 0.4 < sum(s >> bit & 1 for s in seeds) / len(seeds) < 0.6


# ---------------------------------------------------------------------------------------------- random
def test_random_styles_are_mean_plus_std_times_a_seeded_standard_normal(clip):
    stats = EmbeddingStats.of(clip)
    d = clip.embedding_dim
    s = random_styles(stats, 3, 2, 11)  # rescale is off by default
    z = torch.from_numpy(np.random.default_rng(11).standard_normal((3, 2, d))).float()
    assert s.dtype == torch.float32 and s.shape == (3, 2, d)
    torch.testing.assert_close(s, stats.mean + stats.std * z)


def test_random_record_vector_is_regenerated_from_its_recorded_vector_seed(clip, run_dir):
    """``vector_seed`` is the seed the vector was drawn with: ``s = mu + sigma * z``, ``z`` the seed's
    standard normal draw, ``mu, sigma`` per dimension over the ordinary token rows."""
    method = make("random", clip, run_dir, num_style_tokens=2)
    rows = clip.embedding_table[clip.ordinary_token_ids()].float()
    mu, sigma = rows.mean(0), rows.std(0)
    for label, index in [(0, 0), (3, 7)]:
        r = method.record(label, index)
        z = torch.from_numpy(np.random.default_rng(r.vector_seed).standard_normal((2, clip.embedding_dim))).float()
        torch.testing.assert_close(r.style_vector, mu + sigma * z)


# ---------------------------------------------------------------------------------------------- mix
def test_mix_vector_is_the_float64_weighted_sum_of_word_embeddings_rounded_once(clip, run_dir):
    """``s = sum_i lambda_i e(w_i)`` accumulated in float64 from the exact weights, then one rounding to float32."""
    method = make("mix", clip, run_dir)
    for i in range(12):
        r = method.record(i % len(CLASSES), i)
        exact = sum(w * clip.word_embedding(word).double() for w, word in zip(r.style_weights, r.style_words))
        assert torch.equal(r.style_vector[0], exact.float())


def test_mix_draws_distinct_words_capped_at_the_dictionary_size(clip, run_dir, tmp_path):
    path = tmp_path / "three.txt"
    path.write_text("\n".join(WORDS[:3]), encoding="utf-8")
    method = make("mix", clip, run_dir, mix_words=[5], style_dictionary=str(path))
    for i in range(10):
        assert sorted(method.record(0, i).style_words) == sorted(WORDS[:3])


def test_mix_alpha_is_the_dirichlet_concentration(clip, run_dir, words_file):
    flat = make("mix", clip, run_dir, mix_words=[3], mix_alpha=1000.0, style_dictionary=words_file)
    peaked = make("mix", clip, run_dir, mix_words=[3], mix_alpha=0.01, style_dictionary=words_file)
    for i in range(10):
        assert all(abs(w - 1 / 3) < 0.1 for w in flat.record(0, i).style_weights)
    assert sum(max(peaked.record(0, i).style_weights) > 0.9 for i in range(10)) >= 8


# ---------------------------------------------------------------------------------------------- dictionary
def test_style_dictionary_skips_blank_and_comment_lines_and_trims_words(tmp_path):
    path = tmp_path / "styles.txt"
    path.write_text("# styles\n\n  sketch  \n   # an indented comment\n\toil painting\n\n", encoding="utf-8")
    assert load_style_dictionary(str(path)) == ["sketch", "oil painting"]


@pytest.mark.parametrize("content, dupes", [("sketch\ncartoon\nsketch\n", "['sketch']"),
                                            ("sketch\ncartoon\nsketch\ncartoon\nsketch\n", "['cartoon', 'sketch']"),
                                            ("sketch\n", "[]"), ("# nothing\n", "[]")])
def test_style_dictionary_needs_two_distinct_words_and_names_its_file(tmp_path, content, dupes):
    path = tmp_path / "styles.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_style_dictionary(str(path))
    assert f"style dictionary '{path}'" in str(err.value) and f"(duplicates: {dupes})" in str(err.value)


def test_style_dictionary_is_read_as_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / "styles.txt"
    path.write_text("café\nart déco\n", encoding="utf-8")
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale: a default-encoding read would fail
    try:
        words = load_style_dictionary(str(path))
    finally:
        locale.setlocale(locale.LC_CTYPE, old)
    assert words == ["café", "art déco"]


@pytest.mark.parametrize("name", ["handcrafted", "mix"])
def test_preflight_checks_the_configured_style_dictionary_before_any_model(name, tmp_path):
    cfg = PromptsConfig(method=name, style_dictionary=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="does not exist"):
        preflight_prompt_method(cfg, tmp_path)


# ---------------------------------------------------------------------------------------------- encoding helpers
def test_style_features_take_per_prompt_templates_without_class_names(encoder):
    """A list of style-only templates (no class slot), the shortest prompt first: the trimmed run must
    still reach every prompt's EOS."""
    templates = ["{style}", "a picture in the style of {style} with a great many more words after it", "a {style} art"]
    styles = torch.randn(3, 2, encoder.embedding_dim, generator=torch.Generator().manual_seed(1)) * 0.02
    full = encoder.encode(templates, None, styles).features
    torch.testing.assert_close(style_features(encoder, templates, None, styles), full, atol=1e-5, rtol=1e-5)


def test_text_features_in_small_batches_equal_one_batch(clip):
    texts = [f"a photo of a {c}" for c in CLASSES[:5]]
    feats = text_features(clip, texts, batch_size=2)
    torch.testing.assert_close(feats, clip.encode_text(texts).features, atol=1e-5, rtol=1e-5)


def test_mean_pairwise_cosine_distance_averages_one_minus_cosine_over_distinct_pairs():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.0]])
    a = x.double().numpy()
    cos = [a[i] @ a[j] / np.linalg.norm(a[i]) / np.linalg.norm(a[j]) for i in range(5) for j in range(5) if i != j]
    assert mean_pairwise_cosine_distance(x) == pytest.approx(1 - np.mean(cos), abs=1e-6)
    assert mean_pairwise_cosine_distance(torch.eye(2)) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(x[[2, 2, 2]]) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(x[:1]) == 0.0


# ---------------------------------------------------------------------------------------------- articles
@pytest.mark.parametrize("word, article", [
    ("elephant", "an"), ("engraving", "an"), ("oil painting", "an"), ("umbrella", "an"), ("hour", "an"),
    ("dog", "a"), ("one", "a"), ("unicorn", "a"), ("European house", "a"), ("house", "a"), ("8", "a"), ("", "a"),
])
def test_takes_an_follows_the_sound_of_the_first_word(word, article):
    from prompts.templates import takes_an

    assert ("an" if takes_an(word) else "a") == article


def test_with_articles_changes_only_an_a_right_before_its_slot():
    from prompts.templates import with_articles

    t = "a {style} style image of a {class_name}, a photo"
    assert with_articles(t, "elephant", "engraving") == "an {style} style image of an {class_name}, a photo"
    assert with_articles(t, "elephant") == "a {style} style image of an {class_name}, a photo"
    assert with_articles(t, "dog", "sketch") == t
    assert with_articles("A {class_name} in a {style}", "owl", "etching") == "An {class_name} in an {style}"
    assert with_articles("Ma {class_name} and the {class_name}", "owl") == "Ma {class_name} and the {class_name}"


@pytest.mark.parametrize("articles", [True, False])
def test_prompts_articles_decides_the_text_of_every_method(articles, clip, run_dir):
    """"an elephant" in every method's prompt (and "an engraving" for a text style), unless prompts.articles=false
    keeps the template's "a" (for a text encoder that only ever read "a")."""
    elephant = CLASSES.index("elephant")
    want = "an elephant" if articles else "a elephant"
    for name in METHODS:
        method = make(name, clip, run_dir, seed=3, articles=articles)
        r = method.record(elephant, 0)
        assert r.text.endswith(want), (name, r.text)
        assert method.plain_text(elephant) == f"a photo of {'an' if articles else 'a'} elephant"
    hand = make("handcrafted", clip, run_dir, articles=articles)
    hand.words = ["engraving"]
    assert hand.record(0, 0).text == ("an engraving style image of a dog" if articles else
                                      "a engraving style image of a dog")
    assert PromptsConfig().articles is True
