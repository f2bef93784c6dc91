import pytest
import torch
import torch.nn.functional as F

from nas_kd.distill import KDBatch, KDSettings, get_kd_loss, kd_loss_names

torch.manual_seed(0)
S = torch.randn(16, 10)
T = torch.randn(16, 10)
Y = torch.randint(0, 10, (16,))


def test_alpha_zero_is_plain_cross_entropy():
    loss = get_kd_loss("hinton")(KDBatch(S, Y, teacher_logits=T), KDSettings(alpha=0.0))
    assert torch.allclose(loss, F.cross_entropy(S, Y))


def test_kl_term_is_zero_when_student_equals_teacher():
    loss = get_kd_loss("hinton")(KDBatch(T.clone(), Y, teacher_logits=T), KDSettings(alpha=1.0, temperature=3.0))
    assert loss.abs().item() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kl_term_is_scaled_by_t_squared(temperature):
    loss = get_kd_loss("hinton")(KDBatch(S, Y, teacher_logits=T), KDSettings(alpha=1.0, temperature=temperature))
    p_t = F.softmax(T / temperature, dim=1)
    log_p_s = F.log_softmax(S / temperature, dim=1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert torch.allclose(loss, temperature**2 * kl, atol=1e-6)


def test_mixture_weights_kd_and_ce():
    s = KDSettings(alpha=0.7, temperature=2.0)
    loss = get_kd_loss("hinton")(KDBatch(S, Y, teacher_logits=T), s)
    kd = get_kd_loss("hinton")(KDBatch(S, Y, teacher_logits=T), KDSettings(alpha=1.0, temperature=2.0))
    assert torch.allclose(loss, 0.7 * kd + 0.3 * F.cross_entropy(S, Y), atol=1e-6)


def test_gradients_reach_the_student_only():
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    get_kd_loss("hinton")(KDBatch(s, Y, teacher_logits=t.detach()), KDSettings()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_unknown_loss_names_what_exists():
    assert "hinton" in kd_loss_names()
    with pytest.raises(ValueError, match="hinton"):
        get_kd_loss("nope")


def test_kd_without_teacher_logits_is_an_error():
    with pytest.raises(ValueError, match="teacher"):
        get_kd_loss("hinton")(KDBatch(S, Y), KDSettings(alpha=0.5))


def test_describe_reads_as_a_sum():
    assert KDSettings(alpha=0.9, temperature=4).describe() == "loss = 0.9 * hinton(T=4) + 0.1 * ce"
    assert KDSettings(alpha=0).describe() == "loss = ce (labels only)"
