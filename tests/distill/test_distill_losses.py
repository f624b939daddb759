import pytest
import torch

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
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    kd_divergence(s, t.detach(), 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


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
    with pytest.raises(UserError, match="unregistered loss 'unit_test_l2'"):
        loss_weights(cfg)
