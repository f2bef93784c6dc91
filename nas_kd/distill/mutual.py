"""Deep mutual learning (Zhang et al. 2018): K students of one architecture trained together, each
learning from the others' soft outputs as well as from the labels (and the teacher, when there is one).

``Peers`` holds the students and names its own loss step, so ``train_model`` trains all of them at
once, one optimizer and one checkpoint, with no branch in the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.distill.losses import KDBatch, KDSettings, get_kd_loss
from nas_kd.train.batches import Batch
from nas_kd.train.steps import LossStep, StepInputs, register_step, teacher_target

MUTUAL_STEP = "mutual"


class Peers(nn.Module):
    """K students trained together; ``forward`` gives their logits stacked, [K, batch, classes]."""

    loss_step = MUTUAL_STEP

    def __init__(self, peers: list[nn.Module]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError("mutual learning needs at least two peers")
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([peer(x) for peer in self.peers])


def mutual_loss(logits: torch.Tensor, labels: torch.Tensor, kd: KDSettings,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over peers of: the study's KD loss against the teacher (cross-entropy alone without one)
    plus the mean over the other peers of KL(p_other ‖ p_peer) at T = 1, the other peers' outputs
    held fixed (DML's loss; each peer's gradient comes from its own term)."""
    own = get_kd_loss(kd.loss)
    log_p = F.log_softmax(logits, dim=2)
    total = logits.new_zeros(())
    k = len(logits)
    for i in range(k):
        if teacher_logits is not None and kd.uses_teacher:
            total = total + own(KDBatch(logits[i], labels, teacher_logits=teacher_logits), kd)
        else:
            total = total + F.cross_entropy(logits[i], labels)
        others = [F.kl_div(log_p[i], log_p[j].detach(), reduction="batchmean", log_target=True)
                  for j in range(k) if j != i]
        total = total + torch.stack(others).mean()
    return total


@register_step(MUTUAL_STEP)
def mutual_step(run: StepInputs) -> LossStep:
    """``mutual_loss`` on the peers' logits, against the batch's cached teacher logits, a live
    teacher, or neither (labels and peers only)."""
    def loss(b: Batch) -> torch.Tensor:
        return mutual_loss(run.model(b.images), b.labels, run.kd, teacher_target(b, run))

    return LossStep(loss)
