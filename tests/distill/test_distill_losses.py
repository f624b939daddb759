import pytest
import torch
from fixtures import TINY_CLASSES

from dfkd.errors import UserError
from distill.config import LossConfig
from distill.losses import LOSSES, LossInputs, kd_divergence, loss_weights, register_loss, total_loss


def test_kd_is_zero_for_identical_logits():
    logits = torch.randn(8, 7)
    assert kd_divergence(logits, logits.clone(), 4.0).abs().item() < 1e-6


def test_kd_has_tau_squared_scaling():
    s, t = torch.randn(8, 7), torch.randn(8, 7)
    for tau in (1.0, 2.0, 4.0):
        p_t = (t / tau).softmax(-1)
        kl = (p_t * (p_t.log() - (s / tau).log_softmax(-1))).sum(-1).mean()
        assert torch.allclose(kd_divergence(s, t, tau), tau**2 * kl, atol=1e-5)


def test_kd_positive_and_gradient_reaches_student_only():
    """KD is positive for differing logits, its gradient w.r.t. the student logits is tau (p_S - p_T) / B, and
    with the real teacher nothing flows back through the teacher: its logits are constants, its weights get no
    gradient, and the input's gradient is the student's alone."""
    from fixtures import TINY_TEACHER

    from distill.students import create_student
    from distill.teacher import DistillTeacher
    from prompts.teacher import load_teacher

    g = torch.Generator().manual_seed(0)
    s, t, tau = torch.randn(4, 5, generator=g, requires_grad=True), torch.randn(4, 5, generator=g), 2.0
    loss = kd_divergence(s, t, tau)
    assert loss.item() > 1e-3
    loss.backward()
    expected = tau * ((s / tau).softmax(-1) - (t / tau).softmax(-1)) / 4
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)

    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(0)
    student = create_student("tiny_cnn", len(TINY_CLASSES))[0].eval()
    x = torch.randn(3, 3, 32, 32, generator=g, requires_grad=True)  # even an input that requires grad
    t_logits = teacher(x).logits
    assert not t_logits.requires_grad
    kd = kd_divergence(student(x), t_logits, tau)
    assert kd.item() > 1e-3
    kd.backward()
    assert all(p.grad is not None for p in student.parameters()) and any(p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    x_alone = x.detach().clone().requires_grad_(True)
    kd_divergence(student(x_alone), t_logits.detach(), tau).backward()  # the reference: teacher as a constant
    assert torch.allclose(x.grad, x_alone.grad, atol=1e-7)


def test_total_loss_weights_and_parts():
    torch.manual_seed(0)
    batch = LossInputs(torch.randn(6, 3), torch.randn(6, 3), torch.randint(0, 3, (6,)),
                       torch.randn(6, 4), torch.nn.functional.normalize(torch.randn(6, 4), dim=-1))
    cfg = LossConfig(kd=1.0, ce=0.5, emb=2.0, temperature=2.0)
    loss, parts = total_loss(batch, cfg)
    assert set(parts) == {"kd", "ce", "emb"}
    expected = parts["kd"] + 0.5 * parts["ce"] + 2.0 * parts["emb"]
    assert torch.allclose(loss.detach(), expected, atol=1e-6)
    assert set(loss_weights(LossConfig(kd=1.0, ce=0.0, emb=0.0))) == {"kd"}


def test_emb_loss_zero_when_aligned():
    feats = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    batch = LossInputs(torch.zeros(5, 2), torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), 3 * feats, feats)
    assert LOSSES["emb"](batch, LossConfig()).abs().item() < 1e-6


def test_few_shot_real_images_get_ce_and_synthetic_ce_excludes_them():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    real = torch.tensor([False, False, True, True])
    batch = LossInputs(logits, logits.clone(), labels, is_real=real, real_ce_weight=1.0)
    loss, parts = total_loss(batch, LossConfig(kd=1.0))
    ref = torch.nn.functional.cross_entropy(logits[real], labels[real])
    assert torch.allclose(parts["real_ce"], ref) and torch.allclose(loss, parts["kd"] + ref, atol=1e-6)
    ce = LOSSES["ce"](batch, LossConfig())
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits[~real], labels[~real]))


def test_register_custom_loss_and_weight_it_by_name():
    @register_loss("unit_test_l2")
    def l2(batch, cfg):
        return (batch.student_logits - batch.teacher_logits).pow(2).mean()

    try:
        batch = LossInputs(torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
        cfg = LossConfig(kd=0.0, extra={"unit_test_l2": 0.5})
        assert loss_weights(cfg) == {"unit_test_l2": 0.5}
        loss, parts = total_loss(batch, cfg)
        assert torch.allclose(loss, torch.tensor(0.5)) and set(parts) == {"unit_test_l2"}
    finally:
        LOSSES.pop("unit_test_l2")
    with pytest.raises(UserError, match=r"unknown loss 'unit_test_l2' \(distill.loss.extra\)"):
        loss_weights(cfg)
