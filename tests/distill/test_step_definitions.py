"""The definitions behind one training step, each checked against a plain rendering of it: the optimisers'
update rules, the learning-rate schedule, the step count, the few-shot term of ``train_step``, the loss
registry's weights and the teacher's frozen normalisation (docs/method.md section 5)."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures import TINY_CLASSES, tiny_config

from distill.config import LossConfig
from distill.losses import (
    LOSSES,
    LossInputs,
    kd_divergence,
    loss_weights,
    real_ce_loss,
    register_loss,
    total_loss,
)
from distill.step import StepModels, make_optimizer, make_scheduler, total_steps, train_step

# --- optimisers: one parameter, a constant gradient g, two steps, the update rule written out by hand


def _two_steps(optimizer_overrides, tmp_path):
    """The parameter after two steps of ``make_optimizer`` on the loss ``<g, p>`` (gradient g every step)."""
    cfg = tiny_config(tmp_path, *optimizer_overrides)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    g = torch.tensor([0.3, -0.1, 2.0])
    opt = make_optimizer([p], cfg)
    trace = []
    for _ in range(2):
        opt.zero_grad()
        (p * g).sum().backward()
        opt.step()
        trace.append(p.detach().clone())
    return g, trace


def test_sgd_is_nesterov_with_the_configured_lr_momentum_and_weight_decay(tmp_path):
    g, trace = _two_steps(["distill.optimizer=sgd", "distill.lr=0.1", "distill.momentum=0.8",
                           "distill.weight_decay=0.05"], tmp_path)
    lr, mu, wd = 0.1, 0.8, 0.05
    p = np.array([1.0, -2.0, 0.5])
    buf = None
    for step in range(2):
        grad = g.numpy().astype(np.float64) + wd * p  # coupled (L2) weight decay
        buf = grad if buf is None else mu * buf + grad
        p = p - lr * (grad + mu * buf)  # Nesterov look-ahead
        assert np.allclose(trace[step].numpy(), p, atol=1e-6), (step, trace[step], p)


def test_adamw_has_the_configured_lr_and_decoupled_weight_decay(tmp_path):
    g, trace = _two_steps(["distill.optimizer=adamw", "distill.lr=0.05", "distill.weight_decay=0.2"], tmp_path)
    lr, wd, b1, b2, eps = 0.05, 0.2, 0.9, 0.999, 1e-8
    p = np.array([1.0, -2.0, 0.5])
    m = v = np.zeros(3)
    grad = g.numpy().astype(np.float64)
    for t in (1, 2):
        p = p * (1 - lr * wd)  # decoupled: shrinks the weights, not the gradient
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        assert np.allclose(trace[t - 1].numpy(), p, atol=1e-6), (t, trace[t - 1], p)


# --- schedule: the learning-rate factor at every step, rendered from the docstring's definition


def _factors(tmp_path, warmup, total, scheduler, extra=3):
    cfg = tiny_config(tmp_path, f"distill.warmup_steps={warmup}", f"distill.scheduler={scheduler}", "distill.lr=1.0")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.distill.lr)
    sched = make_scheduler(opt, cfg, total)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(total + extra):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def _expected(warmup, total, scheduler, extra=3):
    w = min(warmup, total)  # a warm-up longer than the run is cut to the run
    out = []
    for s in range(total + extra + 1):
        if s < w:
            out.append((s + 1) / (w + 1))  # linear, never 0, reaching 1 only after the warm-up
        elif scheduler == "constant":
            out.append(1.0)
        else:
            frac = min(1.0, (s - w) / max(1, total - w))
            out.append((1 + np.cos(np.pi * frac)) / 2)  # cosine from 1 at the end of warm-up to 0 at `total`
    return np.array(out)


@pytest.mark.parametrize(("warmup", "total", "scheduler"), [
    (0, 6, "cosine"), (3, 10, "cosine"), (2, 3, "cosine"), (9, 4, "cosine"), (2, 6, "constant"), (0, 4, "constant"),
])
def test_schedule_warms_up_linearly_then_follows_cosine_to_zero_or_stays_constant(tmp_path, warmup, total, scheduler):
    got = _factors(tmp_path, warmup, total, scheduler)
    assert np.allclose(got, _expected(warmup, total, scheduler), atol=1e-9), got
    if scheduler == "constant":
        assert np.all(got[min(warmup, total):] == 1.0)
    elif total > warmup:
        assert np.all(got[total:] < 1e-12)  # 0 at the last step, and it stays 0 after it


# --- the number of optimiser steps


@pytest.mark.parametrize(("epochs", "batches", "accumulation", "max_steps"), [
    (3, 5, 2, None), (1, 1, 1, None), (1, 3, 4, None), (2, 7, 3, None), (30, 4, 1, 5),
])
def test_total_steps_counts_whole_accumulation_windows_and_at_least_one(tmp_path, epochs, batches, accumulation,
                                                                        max_steps):
    overrides = [f"distill.epochs={epochs}", f"distill.gradient_accumulation_steps={accumulation}"]
    if max_steps:
        overrides.append(f"distill.max_steps={max_steps}")
    steps = total_steps(tiny_config(tmp_path, *overrides), batches)
    # one optimiser step each time `accumulation` micro-batches have been seen, over every epoch's micro-batches
    windows = sum(1 for micro in range(1, epochs * batches + 1) if micro % accumulation == 0)
    assert type(steps) is int and steps == (max_steps or max(1, windows))


# --- train_step with few-shot real images


@pytest.fixture(scope="module")
def teacher_032():
    from fixtures import TINY_TEACHER

    from distill.teacher import DistillTeacher
    from prompts.teacher import load_teacher

    return DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.3, 0.5, 0.6), (0.2, 0.35, 0.25))


def test_one_shot_real_images_get_their_cross_entropy_at_the_configured_weight(make_cfg, tmp_path, syn_dataset,
                                                                              teacher_032):
    """few_shot.shots=1, ce_weight=2.5: the loss is KD over the whole batch plus 2.5 x the cross-entropy of the
    rows flagged real, all computed by hand on the augmented view train_step draws."""
    from distill.augment import augment, step_generator
    from distill.data import Batch, decode_image, load_synthetic
    from distill.students import DistillStudent, create_student
    from distill.trainer import make_accelerator

    cfg = make_cfg(tmp_path, f"distill.few_shot.data={tmp_path}", "distill.few_shot.shots=1",
                   "distill.few_shot.ce_weight=2.5", "distill.loss.temperature=2", "distill.mean=[0.3,0.5,0.6]",
                   "distill.std=[0.2,0.35,0.25]")
    d = cfg.distill
    ds = load_synthetic(syn_dataset, TINY_CLASSES)
    n = 8
    images = torch.stack([decode_image(ds[i]["image"]["bytes"]) for i in range(n)])
    real = torch.tensor([False, True, False, False, True, True, False, False])
    batch = Batch(images, torch.tensor(ds["label"][:n]), real)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (d.mean, d.std))
    x = (augment(images, 32, d.augment, step_generator(cfg.seed, 0, 0)) - mean) / std
    torch.manual_seed(0)
    model = DistillStudent(create_student("tiny_cnn", 7)[0], 7).train()
    with torch.no_grad():
        s, t = model(x)[0], teacher_032(x).logits
    tau = 2.0
    p_t = (t / tau).softmax(-1)
    kd = tau**2 * (p_t * (p_t.log() - (s / tau).log_softmax(-1))).sum(-1).mean()
    ce_real = -(s[real].log_softmax(-1).gather(1, batch.labels[real].view(-1, 1))).mean()

    loss, parts = train_step(StepModels(model, teacher_032, make_accelerator(cfg), 32, (mean, std)), batch, cfg,
                         step_generator(cfg.seed, 0, 0))
    assert set(parts) == {"kd", "real_ce"}
    assert torch.allclose(parts["real_ce"], ce_real, atol=1e-5) and ce_real > 0
    assert torch.allclose(parts["kd"], kd, rtol=1e-4, atol=1e-6)
    assert torch.allclose(loss, kd + 2.5 * ce_real, rtol=1e-4, atol=1e-5), (loss, kd, ce_real)


# --- losses


def test_real_ce_is_an_exact_zero_that_keeps_the_graph_when_no_image_is_real():
    """No real image in the batch (or no flags at all): the real cross-entropy is 0, not NaN, and the total is the
    other losses alone, with their gradient."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0])
    none_real = LossInputs(s, t, labels, is_real=torch.zeros(5, dtype=torch.bool), real_ce_weight=3.0)
    for batch in (none_real, LossInputs(s, t, labels)):
        zero = real_ce_loss(batch)
        assert zero.item() == 0.0 and zero.requires_grad
    loss, parts = total_loss(none_real, LossConfig(kd=1.0, temperature=2.0))
    assert parts["real_ce"].item() == 0.0
    loss.backward()
    alone = s.detach().clone().requires_grad_(True)
    ref = kd_divergence(alone, t, 2.0)
    ref.backward()
    assert torch.allclose(loss, ref) and torch.allclose(s.grad, alone.grad)


def test_a_registered_loss_stays_off_until_it_is_weighted_in_extra():
    @register_loss("unit_test_off_by_default")
    def always_two(batch, cfg):
        return batch.student_logits.sum() * 0 + 2.0

    try:
        batch = LossInputs(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))
        assert loss_weights(LossConfig(kd=1.0)) == {"kd": 1.0}
        loss, parts = total_loss(batch, LossConfig(kd=1.0))
        assert set(parts) == {"kd"} and torch.allclose(loss, parts["kd"])
        weighted = LossConfig(kd=1.0, extra={"unit_test_off_by_default": 0.25})
        assert loss_weights(weighted) == {"kd": 1.0, "unit_test_off_by_default": 0.25}
        loss, parts = total_loss(batch, weighted)
        assert torch.allclose(loss, parts["kd"] + 0.5)
    finally:
        LOSSES.pop("unit_test_off_by_default")


def test_kd_names_the_class_dimension_so_torch_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kd_divergence(torch.randn(4, 3), torch.randn(4, 3), 4.0)


# --- the teacher


def test_the_teacher_stays_in_eval_mode(teacher_032):
    """Asking the wrapper (or, through it, CLIP) to train must not switch dropout or statistics on."""
    teacher_032.train()
    assert not teacher_032.training and not any(m.training for m in teacher_032.modules())
    teacher_032.train(True)
    assert not teacher_032.training and not teacher_032.clip.model.training


def test_teacher_normalisation_is_not_saved_as_weights():
    """The student's mean/std the teacher undoes are per-run settings: not in its state_dict, unlike CLIP's own.
    (Built here, not by the module fixture, so that mutation testing credits this test with the constructor.)"""
    from fixtures import TINY_TEACHER

    from distill.teacher import DistillTeacher
    from prompts.teacher import load_teacher

    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.3, 0.5, 0.6), (0.2, 0.35, 0.25))
    keys = set(teacher.state_dict())
    assert "mean" not in keys and "std" not in keys
    assert {"clip.mean", "clip.std"} <= keys  # CLIP's own preprocessing is part of the CLIP model
    assert all(not p.requires_grad for p in teacher.parameters())


def test_load_teacher_builds_clip_in_the_requested_dtype_and_answers_float32(tmp_path, monkeypatch):
    from fixtures import TINY_TEACHER

    from distill.teacher import DistillTeacher
    from prompts.teacher import load_teacher

    monkeypatch.setenv("DFKD_CACHE", str(tmp_path))  # the zero-shot head cache is not keyed by dtype: keep it apart
    teacher = DistillTeacher(load_teacher(replace(TINY_TEACHER, dtype="bf16"), TINY_CLASSES[:3]), (0.5,) * 3, (0.5,) * 3)
    assert {p.dtype for p in teacher.clip.model.parameters()} == {torch.bfloat16}
    out = teacher(torch.zeros(2, 3, 16, 16))
    assert out.logits.dtype == out.features.dtype == torch.float32 and out.logits.shape == (2, 3)
    assert math.isfinite(out.logits.sum().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an accelerator device")
def test_load_teacher_puts_every_tensor_on_the_requested_device():
    from fixtures import TINY_TEACHER

    from distill.teacher import DistillTeacher
    from prompts.teacher import load_teacher

    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES, "cuda"), (0.5,) * 3, (0.5,) * 3)
    assert {t.device.type for t in [*teacher.parameters(), *teacher.buffers()]} == {"cuda"}
    assert teacher(torch.zeros(2, 3, 32, 32, device="cuda")).logits.device.type == "cuda"
