"""Contrastive-Prompt learning pinned to its definitions (docs/method.md section 3.1): the step loss rebuilt by
hand, the round split, the Random-Prompt start, what the loop records, Adam's step, progress, the checkpoint and
the bank files. Every run is a few steps on a few styles of tiny:clip."""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import asdict, replace

import pytest
import torch
from prompts_helpers import AN, CLASSES, small_contrastive, unit

from dfkd.errors import UserError
from dfkd.runtime import derive_seed
from prompts.config import ContrastiveConfig, PromptsConfig
from prompts.contrastive import (
    CHECKPOINT_FILE,
    META_FILE,
    STYLES_FILE,
    ContrastiveLearner,
    bank_dir,
    info_nce,
    learn_fingerprint,
    learn_styles,
    load_style_bank,
    save_style_bank,
)
from prompts.styles import EmbeddingStats


def _l_div_by_hand(v: torch.Tensor, vp: torch.Tensor, memory: torch.Tensor, tau: float) -> torch.Tensor:
    """method.md: -1/K sum_k log exp(<v_k,v_k+>/tau) / (exp(<v_k,v_k+>/tau) + sum_{j!=k} exp(<v_k,v_j>/tau) + sum_m ...)."""
    terms = []
    for k in range(len(v)):
        pos = v[k] @ vp[k] / tau
        others = [v[k] @ v[j] / tau for j in range(len(v)) if j != k] + [v[k] @ m / tau for m in memory]
        terms.append(torch.logsumexp(torch.stack([pos, *others]), 0) - pos)
    return torch.stack(terms).mean()


def _l_cls_by_hand(u: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, tau_cls: float) -> torch.Tensor:
    logp = torch.log_softmax(u @ w.t() / tau_cls, dim=-1)
    return -logp[torch.arange(len(labels)), labels].mean()


@pytest.fixture(scope="module")
def clip(encoders):
    return encoders["clip"]


@pytest.fixture(scope="module")
def two_class_learner(clip):
    return ContrastiveLearner(clip, CLASSES[:2], small_contrastive(num_styles=2), 0)


def _learn(encoder, cfg: PromptsConfig, seed: int = 0, checkpoint=None, on_step=None, **kwargs):
    learner = ContrastiveLearner(encoder, CLASSES, cfg, seed)
    fp = learn_fingerprint(cfg, CLASSES, seed, encoder.identity.model_id)
    return learner, learn_styles(learner, checkpoint, fp, on_step=on_step, **kwargs)


# ---------------------------------------------------------------------------------------------- losses
def test_info_nce_keeps_every_tensor_on_the_features_device():
    """On the meta device (which refuses a CPU tensor mixed in), the mask and targets follow the features."""
    v, pos, mem = unit(4, 8, seed=0), unit(4, 8, seed=1), unit(2, 8, seed=2)
    loss = info_nce(v.to("meta"), pos.to("meta"), mem.to("meta"), 0.1)
    assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("regime", ["all styles, every class once", "one style, classes drawn with repeats"])
def test_step_loss_is_l_div_plus_lambda_l_cls_rebuilt_from_the_step_seed(clip, regime):
    """One step's ``div``, ``cls`` and ``loss`` equal the method's formulas rebuilt by hand from the step's
    (seed, round, step) draws: style batch (a batch of 1 is one drawn style; a batch of K takes all K styles,
    in order, without a draw),
    positive noise, classes (each class once when the class batch is the class count, else drawn with
    repeats), which style each class prompt uses; plain class features of the configured plain template;
    ``loss = div + lambda * cls``."""
    first = regime.startswith("all")
    c = ContrastiveConfig(num_styles=3, style_batch=3 if first else 1, class_batch=len(CLASSES) if first else 9,
                          lambda_cls=0.5, tau=0.2, tau_cls=0.02)
    cfg = PromptsConfig(plain_template="a drawing of a {class_name}", contrastive=c)
    seed, rnd, step = 3, 1, 2
    learner = ContrastiveLearner(clip, CLASSES, cfg, seed)
    styles = learner.initial_styles()
    memory = unit(2, learner.plain.shape[1], seed=5)
    with torch.no_grad():
        got = learner.loss(styles, memory, rnd, step)

        g = torch.Generator().manual_seed(derive_seed("contrastive-step", seed, rnd, step))
        batch = torch.randperm(3, generator=g)[:1] if not first else torch.arange(3)
        s = styles[batch]
        noise = torch.randn(s.shape, generator=g) * (c.noise_std * EmbeddingStats.of(clip).std)
        anchors = clip.encode(c.style_template, None, s).features
        positives = clip.encode(c.positive_template, None, s + noise).features
        labels = (torch.randperm(len(CLASSES), generator=g) if first
                  else torch.randint(len(CLASSES), (9,), generator=g))
        pick = torch.randint(len(batch), (len(labels),), generator=g)
        names = [CLASSES[i] for i in labels.tolist()]  # English articles, written out: "an elephant"
        u = clip.encode([f"a {{style}} style image of {AN.get(n, 'a')} {{class_name}}" for n in names], names,
                        s[pick]).features
        w = clip.encode_text([f"a drawing of {AN.get(n, 'a')} {n}" for n in CLASSES]).features
    torch.testing.assert_close(learner.plain, w, atol=1e-5, rtol=1e-5)
    div, cls = _l_div_by_hand(anchors, positives, memory, c.tau), _l_cls_by_hand(u, w, labels, c.tau_cls)
    torch.testing.assert_close(got["div"], div, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["cls"], cls, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["loss"], got["div"] + 0.5 * got["cls"])
    assert got["cls"] > 0.1  # the lambda term is not negligible: the sum pins the weight and the sign


# ---------------------------------------------------------------------------------------------- learner parts
@pytest.mark.parametrize(("k", "r"), [(7, 3), (8, 1), (4, 10), (6, 2)])
def test_rounds_split_the_styles_into_min_r_k_contiguous_even_groups(two_class_learner, k, r):
    learner = copy.copy(two_class_learner)
    learner.c = ContrastiveConfig(num_styles=k, rounds=r)
    ranges = learner.rounds()
    assert len(ranges) == min(r, k)
    assert ranges[0][0] == 0 and ranges[-1][1] == k
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_initial_styles_are_random_prompt_draws_of_the_learning_seed(clip):
    """``(K, n, d)`` draws of N(mean, std^2) of the embedding rows: the same for a seed, another for another
    seed; with ``random_rescale`` every row has the table's median row norm."""
    cfg = small_contrastive(num_styles=8)
    cfg.num_style_tokens = 2
    stats = EmbeddingStats.of(clip)
    a = ContrastiveLearner(clip, CLASSES[:2], cfg, 0).initial_styles()
    assert a.shape == (8, 2, clip.embedding_dim) and a.dtype == torch.float32
    assert torch.equal(a, ContrastiveLearner(clip, CLASSES[:2], cfg, 0).initial_styles())
    assert not torch.equal(a, ContrastiveLearner(clip, CLASSES[:2], cfg, 1).initial_styles())
    z = (a - stats.mean) / stats.std
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.2
    assert not torch.allclose(a.norm(dim=-1), torch.full((8, 2), stats.median_norm), rtol=1e-3)

    cfg.random_rescale = True
    b = ContrastiveLearner(clip, CLASSES[:2], cfg, 0).initial_styles()
    torch.testing.assert_close(b.norm(dim=-1), torch.full((8, 2), stats.median_norm), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the loop
def test_each_round_learns_its_styles_against_the_earlier_rounds_features(clip):
    """Two rounds of one step: the round-0 step sees the first styles as drawn and no memory; the round-1 step
    sees the last styles as drawn and, as memory, the style-only features of the round-0 result. Every
    record reaches ``on_step``; Adam's first step moves every coordinate by ``lr``."""
    lr = 0.05
    cfg = small_contrastive(num_styles=4, rounds=2, steps=1, class_batch=2, lr=lr)
    calls = []
    learner, state = _learn(clip, cfg, seed=4, on_step=lambda r, s, rec: calls.append((r, s, rec)), progress=False)
    init, final = learner.initial_styles(), state.styles
    assert [(rec["round"], rec["step"]) for rec in state.losses] == [(0, 0), (1, 0)]
    assert calls == [(rec["round"], rec["step"], rec) for rec in state.losses]

    with torch.no_grad():
        memory = clip.encode(cfg.contrastive.style_template, None, final[:2]).features
        expected = [learner.loss(init[:2], memory[:0], 0, 0), learner.loss(init[2:], memory, 1, 0)]
    for rec, exp in zip(state.losses, expected, strict=True):
        for key in ("loss", "div", "cls"):
            assert rec[key] == pytest.approx(float(exp[key]), rel=1e-4, abs=1e-4), (rec, key)

    moved = (final - init).abs()
    assert final.shape == init.shape and final.device.type == "cpu"
    assert float(moved.median()) == pytest.approx(lr, rel=1e-3)
    assert float(moved.max()) <= lr * 1.001


def test_progress_bar_is_on_by_default_counts_every_step_and_shows_the_last_losses(clip, capsys):
    cfg = small_contrastive(num_styles=2, steps=2, class_batch=2)
    learner = ContrastiveLearner(clip, CLASSES, cfg, 0)
    state = learn_styles(learner, None, learn_fingerprint(cfg, CLASSES, 0, clip.identity.model_id))
    err = capsys.readouterr().err
    last = [seg for seg in re.split(r"[\r\n]", err) if "contrastive styles" in seg][-1]
    rec = state.losses[-1]
    assert "2/2" in last, last
    for key in ("loss", "div", "cls"):
        assert f"{key}={rec[key]:.3f}" in last, last


def test_checkpoint_of_a_gpu_run_resumes_on_cpu_in_a_folder_made_for_it(clip, tmp_path):
    """A checkpoint written where tensors lived on CUDA (simulated: its storages are tagged ``cuda:0``) into
    a folder that did not exist resumes on a CPU-only machine, running only the steps left."""
    import torch.serialization as ser

    if not hasattr(ser, "_package_registry"):
        pytest.skip("this torch has no storage location registry to tag a CUDA checkpoint with")
    cfg = small_contrastive(num_styles=2, steps=2, class_batch=2, checkpoint_every=1)
    checkpoint = tmp_path / "not" / "yet" / CHECKPOINT_FILE

    class Interrupt(Exception):
        pass

    def stop(rnd, step, rec):
        raise Interrupt

    registry = list(ser._package_registry)
    ser.register_package(-100, lambda s: "cuda:0" if s.device.type == "cpu" else None, lambda obj, loc: None)
    try:
        with pytest.raises(Interrupt):
            _learn(clip, cfg, checkpoint=checkpoint, on_step=stop, progress=False)
    finally:
        ser._package_registry[:] = registry
    assert checkpoint.is_file()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(checkpoint, weights_only=False)
    calls = []
    _, state = _learn(clip, cfg, checkpoint=checkpoint, on_step=lambda r, s, rec: calls.append((r, s)),
                      progress=False)
    assert calls == [(0, 1)]
    assert [(rec["round"], rec["step"]) for rec in state.losses] == [(0, 0), (0, 1)]


# ---------------------------------------------------------------------------------------------- fingerprint, bank
def test_fingerprint_records_every_setting_the_styles_depend_on_but_not_checkpoint_every():
    cfg = small_contrastive(lr=0.03)
    cfg.num_style_tokens, cfg.random_rescale = 2, True
    fp = learn_fingerprint(cfg, tuple(CLASSES), "5", "enc/id")
    c = asdict(cfg.contrastive)
    del c["checkpoint_every"]
    assert fp == {"encoder": "enc/id", "classes": list(CLASSES), "seed": 5, "template": cfg.template,
                  "plain_template": cfg.plain_template, "articles": True, "num_style_tokens": 2, "random_rescale": True,
                  "contrastive": c}
    assert json.loads(json.dumps(fp)) == fp  # it is stored in meta.json and compared after reading back
    other = replace(cfg, contrastive=replace(cfg.contrastive, checkpoint_every=999))
    assert learn_fingerprint(other, CLASSES, 5, "enc/id") == fp


def test_bank_overwrites_in_place_and_its_file_header_names_encoder_seed_and_template(clip, tmp_path):
    from safetensors import safe_open

    folder = bank_dir(tmp_path / "fresh" / "run")
    meta = {"encoder": clip.identity.to_dict(), "seed": 11, "template": "a {style} painting of a {class_name}"}
    first, second = torch.randn(3, 1, clip.embedding_dim), torch.randn(2, 2, clip.embedding_dim).double()
    path = save_style_bank(folder, first, meta)
    assert save_style_bank(folder, second, {**meta, "seed": 12}) == path == folder / STYLES_FILE
    assert sorted(p.name for p in folder.iterdir()) == sorted([STYLES_FILE, META_FILE])
    bank = load_style_bank(tmp_path / "fresh" / "run", clip)
    assert bank.path == path and bank.meta["seed"] == 12
    assert bank.vectors.dtype == torch.float32 and torch.equal(bank.vectors, second.float())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"encoder_model_id": clip.identity.model_id,
                                "embedding_dim": str(clip.embedding_dim), "seed": "12", "template": meta["template"]}


@pytest.mark.parametrize("missing", [STYLES_FILE, META_FILE])
def test_a_bank_missing_either_file_is_refused(clip, tmp_path, missing):
    meta = {"encoder": clip.identity.to_dict(), "seed": 0, "template": "a {style} style image of a {class_name}"}
    save_style_bank(bank_dir(tmp_path), torch.randn(2, 1, clip.embedding_dim), meta)
    (bank_dir(tmp_path) / missing).unlink()
    with pytest.raises(UserError, match="no learned Contrastive-Prompt styles"):
        load_style_bank(tmp_path)


@pytest.mark.parametrize("damage", ["styles flipped", "meta torn", "meta not a mapping", "hash not recorded"])
def test_a_bank_counts_only_when_its_styles_hash_to_the_sha256_its_meta_records(clip, tmp_path, damage):
    """read_bank_meta is what `prompts learn` and `dfkd run` decide "learned" by: a damaged bank is None (learned
    again), a whole one its meta; load_style_bank refuses a damaged one in one line."""
    import json

    from prompts.contrastive import read_bank_meta

    meta = {"encoder": clip.identity.to_dict(), "seed": 0, "template": "a {style} style image of a {class_name}"}
    folder = bank_dir(tmp_path)
    save_style_bank(folder, torch.randn(2, 1, clip.embedding_dim), meta)
    whole = read_bank_meta(folder)
    assert whole["seed"] == 0 and len(whole["styles_sha256"]) == 64
    if damage == "styles flipped":
        raw = bytearray((folder / STYLES_FILE).read_bytes())
        raw[-3] ^= 0xFF  # in the tensor data: the file still parses
        (folder / STYLES_FILE).write_bytes(bytes(raw))
    elif damage == "meta torn":
        (folder / META_FILE).write_text((folder / META_FILE).read_text()[:20])
    elif damage == "meta not a mapping":
        (folder / META_FILE).write_text("[1, 2]")
    else:
        (folder / META_FILE).write_text(json.dumps({k: v for k, v in whole.items() if k != "styles_sha256"}))
    assert read_bank_meta(folder) is None
    with pytest.raises(UserError, match="are damaged"):
        load_style_bank(tmp_path)


@pytest.mark.parametrize("articles", [True, False])
def test_styles_are_learned_in_the_prompts_synthesis_writes(clip, articles):
    """The class templates and plain class features of the learner follow prompts.articles, as the prompt methods do:
    "an elephant" with it, "a elephant" without (written out by hand here)."""
    cfg = replace(small_contrastive(), plain_template="a drawing of a {class_name}", articles=articles)
    learner = ContrastiveLearner(clip, CLASSES, cfg, 0)
    an = AN if articles else {}
    assert learner.templates == [f"a {{style}} style image of {an.get(n, 'a')} {{class_name}}" for n in CLASSES]
    want = clip.encode_text([f"a drawing of {an.get(n, 'a')} {n}" for n in CLASSES]).features
    torch.testing.assert_close(learner.plain, want, atol=1e-5, rtol=1e-5)
