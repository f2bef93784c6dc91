import pytest
import torch
import torch.nn.functional as F

from nas_kd.distill.losses import KDBatch, KDSettings, get_kd_loss, kd_loss_names

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


# ---- the other registered losses ------------------------------------------------------------

FS = [torch.randn(8, 6, 7, 7), torch.randn(8, 12, 4, 4)]
FT = [torch.randn(8, 16, 7, 7), torch.randn(8, 32, 4, 4)]


def _feats(s=FS, t=FT):
    return KDBatch(S, Y, teacher_logits=T, student_features=s, teacher_features=t)


def test_logit_l2_by_hand_and_zero_at_the_teacher():
    loss = get_kd_loss("logit-l2")(KDBatch(S, Y, teacher_logits=T), KDSettings(loss="logit-l2", alpha=1.0))
    assert torch.allclose(loss, ((S - T) ** 2).mean())
    same = get_kd_loss("logit-l2")(KDBatch(T, Y, teacher_logits=T), KDSettings(loss="logit-l2", alpha=1.0))
    assert same.item() == 0.0


def test_fitnet_by_hand():
    fs = [torch.zeros(2, 3, 2, 2)]
    ft = [torch.ones(2, 3, 2, 2) * 2]
    loss = get_kd_loss("fitnet")(_feats(fs, ft), KDSettings(loss="fitnet", alpha=1.0))
    assert loss.item() == pytest.approx(4.0)
    assert get_kd_loss("fitnet")(_feats(ft, ft), KDSettings(loss="fitnet", alpha=1.0)).item() == 0.0


def test_attention_map_by_hand():
    from nas_kd.distill.losses import attention_map

    a = torch.zeros(1, 2, 1, 2)
    a[0, 0, 0, 0], a[0, 1, 0, 0], a[0, 0, 0, 1] = 1.0, 1.0, 2.0  # sum_c |A_c|^2 = [2, 4]
    assert torch.allclose(attention_map(a), torch.tensor([[2.0, 4.0]]) / (20**0.5))


def test_attention_is_zero_for_proportional_features_and_ignores_channel_counts():
    loss = get_kd_loss("attention")
    s = KDSettings(loss="attention", alpha=1.0)
    scaled = [3.0 * f for f in FT]  # same spatial energy pattern, other scale
    assert loss(_feats(scaled, FT), s).item() < 1e-6
    assert loss(_feats(FS, FT), s).item() > 0  # 6 vs 16 channels: still comparable


def test_rkd_is_invariant_to_scale_and_rotation_of_the_embedding():
    e = torch.randn(8, 5, 1, 1)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    rotated = (e.flatten(1) @ q * 4.0).view(8, 5, 1, 1)
    s = KDSettings(loss="rkd", alpha=1.0)
    assert get_kd_loss("rkd")(_feats([rotated], [e]), s).item() < 1e-5
    assert get_kd_loss("rkd")(_feats([torch.randn(8, 3, 1, 1)], [e]), s).item() > 1e-3


def test_sp_by_hand_and_zero_for_identical_similarities():
    from nas_kd.distill.losses import similarity

    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(similarity(q), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    s = KDSettings(loss="sp", alpha=1.0)
    assert get_kd_loss("sp")(_feats([FT[0] * 5], [FT[0]]), s).item() < 1e-6
    assert get_kd_loss("sp")(_feats(FS, FT), s).item() > 0


@pytest.mark.parametrize("name", ["hinton", "logit-l2", "fitnet", "attention", "rkd", "sp"])
def test_every_loss_sends_gradients_to_the_student_only(name):
    fs = [f.clone().requires_grad_(True) for f in (FS if name != "fitnet" else [torch.randn(8, 16, 7, 7)])]
    ft = [f.clone().requires_grad_(True) for f in (FT if name != "fitnet" else FT[:1])]
    s_logits = S.clone().requires_grad_(True)
    t_logits = T.clone().requires_grad_(True)
    batch = KDBatch(s_logits, Y, teacher_logits=t_logits.detach(), student_features=fs,
                    teacher_features=[f.detach() for f in ft])
    get_kd_loss(name)(batch, KDSettings(loss=name, alpha=0.5, temperature=2.0)).backward()
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0
    if name not in ("hinton", "logit-l2"):
        used = fs[-1:] if name == "rkd" else fs  # rkd relates the last (pooled) features only
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in used)
    assert t_logits.grad is None and all(f.grad is None for f in ft)


@pytest.mark.parametrize("name", ["fitnet", "attention", "rkd", "sp"])
def test_feature_losses_say_what_they_need(name):
    with pytest.raises(ValueError, match="features"):
        get_kd_loss(name)(KDBatch(S, Y, teacher_logits=T), KDSettings(loss=name))


def test_feature_pairing_matches_stages_by_spatial_size():
    from nas_kd.train.features import pair_features

    teacher = [(32, 28, 28), (64, 14, 14), (128, 7, 7)]
    # the last student stage of each teacher size; a teacher size the student lacks is skipped
    assert pair_features([(8, 14, 14), (16, 14, 14), (24, 7, 7)], teacher) == [(1, 1), (2, 2)]
    assert pair_features([(8, 28, 28), (16, 14, 14), (24, 7, 7)], teacher) == [(0, 0), (1, 1), (2, 2)]
    assert pair_features([(8, 4, 4), (16, 2, 2)], teacher) == [(1, 2)]  # nothing in common: last with last
