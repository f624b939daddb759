"""Contrastive-Prompt learning (method.md section 3): losses, learning, memory bank, resume, bank files."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from prompts_helpers import CLASSES, small_contrastive, unit

from dfkd.errors import UserError
from prompts.config import ContrastiveConfig, PromptsConfig
from prompts.contrastive import (
    CHECKPOINT_FILE,
    ContrastiveLearner,
    bank_dir,
    class_consistency_loss,
    info_nce,
    learn_fingerprint,
    learn_styles,
    load_style_bank,
    save_style_bank,
)
from prompts.diagnostics import class_consistency, diversity
from prompts.methods import create_prompt_method


def test_info_nce_matches_its_definition():
    v, pos, mem, tau = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(3, 8, seed=2), 0.1
    expected = 0.0
    for k in range(5):
        negatives = [v[j] for j in range(5) if j != k] + list(mem)
        denom = torch.exp(v[k] @ pos[k] / tau) + sum(torch.exp(v[k] @ x / tau) for x in negatives)
        expected += -torch.log(torch.exp(v[k] @ pos[k] / tau) / denom) / 5
    torch.testing.assert_close(info_nce(v, pos, mem, tau), expected)
    # the memory bank only adds negatives: more of them can only raise the loss
    assert info_nce(v, pos, mem, tau) > info_nce(v, pos, mem[:0], tau)


def test_class_consistency_loss_matches_its_definition():
    u, w, labels = unit(4, 8, seed=3), unit(3, 8, seed=4), torch.tensor([0, 2, 1, 2])
    logp = torch.log_softmax(u @ w.t() / 0.01, dim=-1)
    torch.testing.assert_close(class_consistency_loss(u, w, labels, 0.01), -logp[torch.arange(4), labels].mean())


def test_step_loss_pairs_each_style_with_its_own_positive(encoders):
    """One learner step's L_div equals info_nce of anchors and positives rebuilt by hand from the step seed:
    the step's style batch, the noise, each style in T_style (anchor) and, noised, in T_style' (its positive),
    encoded through the full 77-token encoder path."""
    from dfkd.runtime import derive_seed
    from prompts.styles import EmbeddingStats

    enc = encoders["clip"]
    cfg = small_contrastive(num_styles=6, style_batch=4)
    c, seed, rnd, step = cfg.contrastive, 3, 1, 2
    learner = ContrastiveLearner(enc, CLASSES, cfg, seed)
    styles = learner.initial_styles()
    memory = unit(2, learner.plain.shape[1], seed=5)
    with torch.no_grad():
        div = learner.loss(styles, memory, rnd, step)["div"]

        g = torch.Generator().manual_seed(derive_seed("contrastive-step", seed, rnd, step))
        batch = torch.randperm(6, generator=g)[:4]
        s = styles[batch]
        noise = torch.randn(s.shape, generator=g) * (c.noise_std * EmbeddingStats.of(enc).std)
        anchors = enc.encode(c.style_template, None, s).features
        positives = enc.encode(c.positive_template, None, s + noise).features
    torch.testing.assert_close(div, info_nce(anchors, positives, memory, c.tau), atol=1e-5, rtol=1e-5)
    # the pairing matters: each anchor with a neighbour's positive gives another loss
    assert (info_nce(anchors, positives.roll(1, 0), memory, c.tau) - div).abs() > 1e-3


def _learn(encoder, cfg: PromptsConfig, seed: int = 0, checkpoint=None, on_step=None):
    learner = ContrastiveLearner(encoder, CLASSES, cfg, seed)
    fp = learn_fingerprint(cfg, CLASSES, seed, encoder.identity.model_id)
    return learner, learn_styles(learner, checkpoint, fp, progress=False, on_step=on_step)


def test_learning_beats_random_styles_in_diversity_and_class_consistency(encoders, tmp_path):
    """On tiny CLIP with the method's default losses, temperatures and lr: the total loss decreases;
    the learned styles are clearly more diverse than the same number of Random-Prompt styles, and
    their prompts stay more class-consistent."""
    enc, k = encoders["clip"], 16
    cfg = PromptsConfig(contrastive=ContrastiveConfig(num_styles=k, steps=100, class_batch=len(CLASSES)))
    learner, state = _learn(enc, cfg)
    losses = [r["loss"] for r in state.losses]
    assert len(losses) == 100 and all(torch.isfinite(torch.tensor(losses)))
    assert statistics.mean(losses[-20:]) < 0.8 * statistics.mean(losses[:20])

    fp = learn_fingerprint(cfg, CLASSES, 0, enc.identity.model_id)
    save_style_bank(bank_dir(tmp_path), state.styles, {"encoder": enc.identity.to_dict(), "seed": 0,
                                                       "template": cfg.template, "fingerprint": fp})
    scores = {}
    for name in ("contrastive", "random"):
        cfg.method = name
        method = create_prompt_method(cfg, classes=CLASSES, encoder=enc, seed=0, run_dir=tmp_path)
        scores[name] = (diversity(method, k), class_consistency(method, k))
    (div_c, cls_c), (div_r, cls_r) = scores["contrastive"], scores["random"]
    assert div_c > 2 * div_r and div_c > div_r + 0.1, scores
    assert cls_c > cls_r, scores
    # the learner's own diagnostics agree with the methods' (same prompts, same features)
    assert learner.diagnostics(state.styles)["diversity"] == pytest.approx(div_c, abs=1e-5)


def test_learning_is_reproducible_and_seed_dependent(encoders):
    cfg = small_contrastive(steps=4)
    _, a = _learn(encoders["sd"], cfg, seed=0)
    _, b = _learn(encoders["sd"], cfg, seed=0)
    _, c = _learn(encoders["sd"], cfg, seed=1)
    assert torch.equal(a.styles, b.styles) and a.losses == b.losses
    assert not torch.equal(a.styles, c.styles)


def test_multi_token_styles_are_learned_and_used(encoders, tmp_path):
    enc = encoders["clip"]
    cfg = small_contrastive(steps=3)
    cfg.num_style_tokens = 3
    _, state = _learn(enc, cfg)
    assert state.styles.shape == (8, 3, enc.embedding_dim) and torch.isfinite(state.styles).all()
    save_style_bank(bank_dir(tmp_path), state.styles, {"encoder": enc.identity.to_dict(), "seed": 0,
                                                       "template": cfg.template})
    cfg.method = "contrastive"
    method = create_prompt_method(cfg, classes=CLASSES, encoder=enc, seed=0, run_dir=tmp_path)
    record = method.record(0, 0)
    assert record.style_vector.shape == (3, enc.embedding_dim)
    assert method.encode([record]).features.shape[0] == 1


class Interrupt(Exception):
    pass


def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_does(encoders, tmp_path):
    """Two rounds (the second with the first's features as memory bank), interrupted mid-round."""
    enc = encoders["clip"]
    cfg = small_contrastive(num_styles=6, steps=5, rounds=2, style_batch=2, checkpoint_every=2)
    _, full = _learn(enc, cfg)
    assert [(r["round"], r["step"]) for r in full.losses] == [(r, s) for r in range(2) for s in range(5)]

    checkpoint = tmp_path / CHECKPOINT_FILE

    def stop(rnd, step, losses):
        if (rnd, step) == (1, 2):  # checkpointed at (round 1, step 2); this third step of round 1 is lost
            raise Interrupt

    with pytest.raises(Interrupt):
        _learn(enc, cfg, checkpoint=checkpoint, on_step=stop)
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, weights_only=True)  # plain data: no code is unpickled to resume
    assert (saved["round"], saved["step"]) == (1, 2)
    _, resumed = _learn(enc, cfg, checkpoint=checkpoint)
    assert torch.equal(resumed.styles, full.styles)
    assert resumed.losses == full.losses


class _Payload:
    """Pickles as a call to ``Path.touch(marker)``: if a loader ever runs it, ``marker`` appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


@pytest.mark.parametrize("damage", ["planted code", "truncated", "empty"])
def test_a_damaged_or_planted_checkpoint_is_never_trusted_and_learning_starts_over(encoders, tmp_path, capsys, damage):
    """Resuming never unpickles code (a planted ``checkpoint.pt`` does not run), and a checkpoint that does not
    load is reported and ignored: the styles are those of a run from scratch."""
    enc, cfg = encoders["clip"], small_contrastive(checkpoint_every=1)
    _, full = _learn(enc, cfg)
    checkpoint, marker = tmp_path / CHECKPOINT_FILE, tmp_path / "payload-ran"
    if damage == "planted code":
        torch.save({"fingerprint": _Payload(marker), "round": 0}, checkpoint)
    else:
        _learn(enc, cfg, checkpoint=checkpoint)
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    capsys.readouterr()
    _, again = _learn(enc, cfg, checkpoint=checkpoint)
    assert not marker.exists()
    assert "ignoring the damaged checkpoint" in capsys.readouterr().out
    assert torch.equal(again.styles, full.styles) and again.losses == full.losses


def test_checkpoint_of_other_settings_is_refused(encoders, tmp_path):
    enc, checkpoint = encoders["clip"], tmp_path / CHECKPOINT_FILE

    def stop(rnd, step, losses):
        raise Interrupt

    with pytest.raises(Interrupt):
        _learn(enc, small_contrastive(checkpoint_every=1), checkpoint=checkpoint, on_step=stop)
    with pytest.raises(UserError, match="other settings"):
        _learn(enc, small_contrastive(lr=0.5), checkpoint=checkpoint)


def test_bank_round_trip_and_identity(encoders, tmp_path):
    enc = encoders["sd"]
    vectors = torch.randn(4, 2, enc.embedding_dim)
    meta = {"encoder": enc.identity.to_dict(), "seed": 7, "template": "a {style} style image of a {class_name}"}
    save_style_bank(bank_dir(tmp_path), vectors, meta)
    bank = load_style_bank(tmp_path, enc)
    assert torch.equal(bank.vectors, vectors) and bank.identity == enc.identity
    assert json.loads((bank_dir(tmp_path) / "meta.json").read_text())["seed"] == 7
    with pytest.raises(UserError, match="re-learn"):
        load_style_bank(tmp_path, encoders["clip"])
