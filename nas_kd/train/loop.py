"""One training run, readable top to bottom: the loop that trains students and teachers alike."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas_kd import interrupts
from nas_kd.distill.losses import KDBatch, KDSettings, get_kd_loss, needs_adapter, needs_features, pair_features
from nas_kd.errors import TrialFailed


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained; stored with every study and export."""

    epochs: float = 2.0  # fractional epochs are allowed: 0.5 = half a pass over the data
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate of the one-cycle schedule (SGD, Nesterov)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: str = "none"  # "none" | "crop" (random crop, pad 2) | "crop-flip" | "crop-flip-erase"
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    seconds: float
    steps: int
    final_loss: float


def at_least_steps(epochs: float, n_images: int, batch_size: int, min_steps: int, *,
                   whole_epochs: bool = False) -> float:
    """``epochs``, or more when they would give fewer than ``min_steps`` SGD steps (small datasets:
    2 epochs of 1,000 images are 15 steps, too few to learn or rank anything). ``whole_epochs``
    rounds the longer length up to a whole number of epochs."""
    steps_per_epoch = max(1, n_images // batch_size)
    needed = min_steps / steps_per_epoch
    return float(max(epochs, math.ceil(needed) if whole_epochs else needed))


def device_for(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)  # an ONNX teacher has none: it runs on the CPU
    return param.device if param is not None else torch.device("cpu")


AUGMENTATIONS = ("none", "crop", "crop-flip", "crop-flip-erase")


def augment_batch(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Per-sample random crop after zero-padding by 2, horizontal flip, random erasing; whole batch at once."""
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {mode!r}: choose one of {AUGMENTATIONS}")
    n, _, h, w = x.shape
    pad = 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).view(n, 1, 1)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).view(n, 1, 1)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    if mode == "crop-flip":
        flip = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1)
        cols = torch.where(flip, cols.flip(-1), cols)
    batch_idx = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    out = padded.permute(0, 2, 3, 1)[batch_idx.to(x.device), rows.to(x.device), cols.to(x.device)]
    out = out.permute(0, 3, 1, 2).contiguous()
    return random_erase(out, g) if mode.endswith("erase") else out


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Zhong et al. 2020: with probability p, set a random rectangle (2–33% of the area) to 0 (the mean)."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.02, 0.33, generator=g) * h * w
    log_ratio = torch.empty(n).uniform_(math.log(0.3), math.log(3.3), generator=g)
    eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    on = torch.rand(n, generator=g) < p
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    mask = ((rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
            & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1)) & on.view(n, 1, 1))
    return x.masked_fill(mask.unsqueeze(1).to(x.device), 0.0)


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    kd: KDSettings | None = None,
    teacher_logits: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y); with ``kd``, against the teacher's targets, which follow the
    augmentation in one of three ways (see ``nas_kd.teacher.load.kd_targets``):

    - ``teacher_logits`` [N, C]: cached logits of the un-augmented images;
    - ``views`` [K, N, ...] with ``teacher_logits`` [K, N, C]: K fixed augmented views, each with its
      cached logits; every step draws one view per image (``settings.augment`` is then not re-applied);
    - ``teacher``: the teacher runs on each augmented batch (exact, but costs its forward pass).

    With ``checkpoint``, the state is saved after every epoch and training resumes from it.
    Raises TrialFailed when the loss stops being finite.
    """
    kd = kd or KDSettings(alpha=0.0)
    loss_fn = get_kd_loss(kd.loss)
    if kd.uses_teacher and teacher_logits is None and teacher is None:
        raise ValueError("KD training needs teacher logits or a teacher")
    features = kd.uses_teacher and needs_features(kd.loss)  # teacher features are computed on the fly
    if features and (teacher is None or not hasattr(teacher, "forward_features")):
        raise ValueError(f"{kd.loss} needs a teacher module with forward_features")
    if features and checkpoint is not None:
        raise ValueError("feature distillation does not checkpoint its adapters")
    device = device_for(model)
    g = torch.Generator().manual_seed(settings.seed)
    n, bs = len(y), settings.batch_size
    steps_per_epoch = max(1, n // bs)  # drop the last partial batch: batch norm needs > 1 sample
    total_steps = max(1, int(round(settings.epochs * steps_per_epoch)))
    pairs, adapters = _feature_pairs(model, teacher, x[:2].to(device), kd.loss) if features else ([], nn.ModuleList())
    opt = torch.optim.SGD(
        [*model.parameters(), *adapters.parameters()], lr=settings.lr, momentum=settings.momentum,
        weight_decay=settings.weight_decay, nesterov=True,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total_steps, pct_start=0.15)
    ce_only = KDSettings(alpha=0.0)
    model.train()
    start, step, loss_value = time.perf_counter(), 0, math.nan
    earlier_seconds = 0.0  # training time of the runs this one resumes, so seconds cover the whole training
    if checkpoint is not None and checkpoint.exists():
        step, earlier_seconds = _resume(checkpoint, model, opt, sched, g)
    with interrupts.deferred():  # Ctrl-C stops at a step boundary, never inside torch (see interrupts)
        while step < total_steps:
            order = torch.randperm(n, generator=g)
            for i in range(steps_per_epoch):
                if step >= total_steps:
                    break
                interrupts.check()
                idx = order[i * bs : (i + 1) * bs]
                if views is not None:
                    view = torch.randint(0, len(views), (len(idx),), generator=g)
                    xb, target = views[view, idx].to(device), teacher_logits[view, idx]
                else:
                    xb = augment_batch(x[idx], settings.augment, g).to(device, non_blocking=True)
                    target = teacher_logits[idx] if teacher_logits is not None else None
                yb = y[idx].to(device, non_blocking=True)
                xb = xb.contiguous(memory_format=torch.channels_last)
                if features:
                    s_feats = model.forward_features(xb)
                    with torch.no_grad():
                        t_feats = teacher.forward_features(xb)
                    loss = loss_fn(KDBatch(
                        model.classify(s_feats[-1]), yb, teacher_logits=target,
                        student_features=[adapt(s_feats[si]) for (si, _), adapt in zip(pairs, adapters, strict=True)],
                        teacher_features=[t_feats[j] for _, j in pairs]), kd)
                elif kd.uses_teacher:
                    logits = model(xb)
                    if target is None:
                        with torch.no_grad():
                            target = teacher(xb)
                    loss = loss_fn(KDBatch(logits, yb, teacher_logits=target.to(device)), kd)
                elif settings.label_smoothing > 0:
                    loss = torch.nn.functional.cross_entropy(model(xb), yb, label_smoothing=settings.label_smoothing)
                else:
                    loss = loss_fn(KDBatch(model(xb), yb), ce_only)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrialFailed(f"loss became {loss_value} at step {step + 1}/{total_steps}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if on_step is not None:
                    on_step(step, total_steps, loss_value)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, opt, sched, g, step, earlier_seconds + time.perf_counter() - start)
    return TrainResult(seconds=earlier_seconds + time.perf_counter() - start, steps=step, final_loss=loss_value)


class _Adapter(nn.Module):
    """FitNets' regressor: a 1×1 conv to the teacher's channels, resized to its spatial size."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv, self.size = nn.Conv2d(cin, cout, 1, bias=False), size

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.conv(f)
        return f if f.shape[-2:] == self.size else nn.functional.interpolate(f, size=self.size, mode="bilinear")


def _feature_pairs(model: nn.Module, teacher: nn.Module, x: torch.Tensor, loss: str) -> tuple[list, nn.ModuleList]:
    """Student/teacher stage pairs (``pair_features``), and an adapter per pair where the loss uses one."""
    was_training = model.training
    with torch.no_grad():
        s_shapes = [tuple(f.shape[1:]) for f in model.eval().forward_features(x)]
        t_shapes = [tuple(f.shape[1:]) for f in teacher.forward_features(x)]
    model.train(was_training)
    pairs = pair_features(s_shapes, t_shapes)
    device = device_for(model)
    adapters = nn.ModuleList(
        _Adapter(s_shapes[i][0], t_shapes[j][0], t_shapes[j][-2:]) if needs_adapter(loss) else nn.Identity()
        for i, j in pairs
    ).to(device)
    return pairs, adapters


def _save_checkpoint(path: Path, model: nn.Module, opt, sched, g: torch.Generator, step: int,  # noqa: ANN001
                     seconds: float) -> None:
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": g.get_state(), "step": step, "seconds": seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(path: Path, model: nn.Module, opt, sched, g: torch.Generator) -> tuple[int, float]:  # noqa: ANN001
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    g.set_state(state["rng"])
    return int(state["step"]), float(state.get("seconds", 0.0))


@torch.inference_mode()
@torch.no_grad()  # evaluation and teacher logits need no autograd graph (memory, not much time)
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for every row of ``x``, in eval mode, on the model's device; returned on the CPU."""
    model.eval()
    device = device_for(model)
    out = [
        model(x[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (predict_logits(model, x, batch_size).argmax(1) == y).float().mean().item()
