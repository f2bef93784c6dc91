"""Distillation losses, registered by name and chosen from config (``--kd NAME``).

A loss is one small function ``(batch, settings) -> scalar tensor``; adding a loss is adding one
function with ``@register_kd_loss("name")``, never a new branch in the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KDSettings:
    """Which loss and its knobs; ``alpha = 0`` means labels only (no teacher is needed)."""

    loss: str = "hinton"
    temperature: float = 4.0
    alpha: float = 0.9

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0

    @property
    def searched(self) -> bool:
        return self.loss == KD_SEARCH

    def describe(self) -> str:
        if not self.uses_teacher:
            return "loss = ce (labels only)"
        if self.searched:
            return "loss, temperature and alpha chosen per trial (--kd search)"
        return f"loss = {self.alpha:g} * {self.loss}(T={self.temperature:g}) + {1 - self.alpha:g} * ce"


@dataclass(frozen=True)
class KDBatch:
    """What a loss may look at for one batch; feature lists are filled only for losses needing them."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: list[torch.Tensor] | None = None
    teacher_features: list[torch.Tensor] | None = None


KDLoss = Callable[[KDBatch, KDSettings], torch.Tensor]
_LOSSES: dict[str, KDLoss] = {}
_FEATURE_LOSSES: set[str] = set()
_ADAPTED_LOSSES: set[str] = set()
KD_SEARCH = "search"  # --kd search: Optuna picks loss, temperature and alpha per trial


def register_kd_loss(name: str, *, features: bool = False, adapter: bool = False) -> Callable[[KDLoss], KDLoss]:
    """Register a loss; ``features=True`` if it needs intermediate student and teacher features,
    ``adapter=True`` if student features go through a learned 1×1 conv to the teacher's shape."""
    def wrap(fn: KDLoss) -> KDLoss:
        _LOSSES[name] = fn
        if features:
            _FEATURE_LOSSES.add(name)
        if adapter:
            _ADAPTED_LOSSES.add(name)
        return fn

    return wrap


def needs_features(name: str) -> bool:
    return name in _FEATURE_LOSSES


def needs_adapter(name: str) -> bool:
    return name in _ADAPTED_LOSSES


TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def suggest_kd(trial, losses: list[str]) -> KDSettings:  # noqa: ANN001 - an optuna.Trial
    """One trial's distillation recipe under --kd search (names kd_loss, kd_temperature, kd_alpha)."""
    return KDSettings(
        loss=trial.suggest_categorical("kd_loss", losses),
        temperature=trial.suggest_categorical("kd_temperature", list(TEMPERATURES)),
        alpha=trial.suggest_float("kd_alpha", 0.5, 0.95, step=0.05),
    )


def kd_loss_names() -> list[str]:
    return sorted(_LOSSES)


def get_kd_loss(name: str) -> KDLoss:
    """The registered loss called ``name``; ValueError naming the registered ones otherwise."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown KD loss {name!r}: choose one of {', '.join(kd_loss_names())}") from None


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T), batch mean, times T² (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@register_kd_loss("hinton")
def hinton_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """``alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(labels, student)``.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". The T² factor
    keeps gradient magnitudes comparable across temperatures.
    """
    ce = F.cross_entropy(batch.student_logits, batch.labels)
    if s.alpha == 0:
        return ce
    if batch.teacher_logits is None:
        raise ValueError("hinton loss with alpha > 0 needs teacher logits")
    kd = soft_kl(batch.student_logits, batch.teacher_logits, s.temperature)
    return s.alpha * kd + (1 - s.alpha) * ce


def _combine(kd_term: torch.Tensor, batch: KDBatch, s: KDSettings) -> torch.Tensor:
    return s.alpha * kd_term + (1 - s.alpha) * F.cross_entropy(batch.student_logits, batch.labels)


def _need(value: object, what: str, loss: str) -> None:
    if value is None:
        raise ValueError(f"{loss} loss needs {what}")


@register_kd_loss("logit-l2")
def logit_l2_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """``alpha·mean((z_s − z_t)²) + (1 − alpha)·CE``: regression of the teacher's logits.

    Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?": logits keep what softmax hides
    ([−10, 0, 10] and [10, 20, 30] give the same probabilities). Temperature is not used.
    """
    _need(batch.teacher_logits, "teacher logits", "logit-l2")
    return _combine(F.mse_loss(batch.student_logits, batch.teacher_logits), batch, s)


def _pairs(batch: KDBatch, loss: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    _need(batch.student_features, "student features", loss)
    _need(batch.teacher_features, "teacher features", loss)
    if len(batch.student_features) != len(batch.teacher_features) or not batch.student_features:
        raise ValueError(f"{loss} loss needs matched, non-empty lists of student and teacher features")
    return list(zip(batch.student_features, batch.teacher_features, strict=True))


@register_kd_loss("fitnet", features=True, adapter=True)
def fitnet_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """``alpha·Σ_pairs mean((r(F_s) − F_t)²) + (1 − alpha)·CE`` (FitNets hints, Romero et al. 2015).

    ``student_features`` must already be mapped by the learned adapter r (a 1×1 conv, resized to
    the teacher's spatial size) so shapes match the teacher's.
    """
    return _combine(sum(F.mse_loss(fs, ft) for fs, ft in _pairs(batch, "fitnet")), batch, s)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``F(A) = Σ_c |A_c|²``, flattened and L2-normalised per sample (Zagoruyko & Komodakis 2017)."""
    return F.normalize(feature.pow(2).sum(1).flatten(1), dim=1)


@register_kd_loss("attention", features=True)
def attention_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """``alpha·Σ_pairs mean_b ‖Q_s − Q_t‖₂ + (1 − alpha)·CE`` with Q the normalised attention maps.

    Channel counts may differ (maps sum over channels); a student map is resized to its teacher's
    spatial size when they differ.
    """
    total = 0.0
    for fs, ft in _pairs(batch, "attention"):
        if fs.shape[-2:] != ft.shape[-2:]:
            fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (attention_map(fs) - attention_map(ft)).norm(dim=1).mean()
    return _combine(total, batch, s)


def _pdist(e: torch.Tensor) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # diff[i, j] = unit vector e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of angle (j, i, k) for all triples


@register_kd_loss("rkd", features=True)
def rkd_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """Relational KD (Park et al. 2019) on the globally pooled last features:
    ``alpha·(25·Huber(ψ_D^s, ψ_D^t) + 50·Huber(ψ_A^s, ψ_A^t)) + (1 − alpha)·CE``.

    ψ_D: pairwise distances divided by their mean; ψ_A: cosines of the angles in every triple.
    Both are invariant to the embeddings' widths, so no adapter is needed.
    """
    fs, ft = _pairs(batch, "rkd")[-1]
    es, et = fs.mean((2, 3)) if fs.dim() == 4 else fs, ft.mean((2, 3)) if ft.dim() == 4 else ft
    ds, dt = _pdist(es), _pdist(et)
    ds = ds / ds[ds > 0].mean().clamp_min(1e-12)
    dt = dt / dt[dt > 0].mean().clamp_min(1e-12)
    distance = F.smooth_l1_loss(ds, dt)
    angle = F.smooth_l1_loss(_angles(es), _angles(et))
    return _combine(25.0 * distance + 50.0 * angle, batch, s)


def similarity(feature: torch.Tensor) -> torch.Tensor:
    """The batch's b×b similarity matrix ``normalize_rows(Q·Qᵀ)``, Q the flattened features."""
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


@register_kd_loss("sp", features=True)
def sp_loss(batch: KDBatch, s: KDSettings) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ``alpha·Σ_pairs ‖G_s − G_t‖²_F / b² + (1 − alpha)·CE``."""
    total = 0.0
    for fs, ft in _pairs(batch, "sp"):
        b = fs.shape[0]
        total = total + (similarity(fs) - similarity(ft)).pow(2).sum() / (b * b)
    return _combine(total, batch, s)
