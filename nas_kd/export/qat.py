"""Quantization-aware fine-tuning of an exported student, with KD from the export's own teacher and
targets, so that onnxruntime's static quantization of it loses less accuracy.

The fake quantization copies onnxruntime's scheme (``quantize.SCHEME``), using PyTorch's own
quantization modules (``torch.ao.quantization.FakeQuantize`` and its observers): weights int8,
symmetric per output channel on [-127, 127] (onnxruntime's symmetric range), read from the
current weights at every step; the input of every convolution and linear layer 8-bit asymmetric
per tensor, its range a moving average. Batch norm is folded into the convolutions first, as the
ONNX export folds it, so the weights trained under fake quantization are the ones onnxruntime
quantizes. The fake-quant modules hang on the student itself (a parametrization of each weight,
a pre-hook on each layer), so after training they come off and leave the plain student, exported
and quantized like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    disable_observer,
)
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.hooks import RemovableHandle

from nas_kd.distill.losses import needs_features
from nas_kd.export.retrain import Recipe, TrainingClock, checkpoint_file
from nas_kd.model.layers import LowRankConv1x1
from nas_kd.progress import Progress
from nas_kd.train import at_least_steps, train_model

# A few epochs at a tenth of the export's peak rate: a repair of a trained student, not a training.
# At least QAT_MIN_STEPS steps so that small data gets more than a handful. Each epoch is checkpointed
# beside the export folder like the export's own training, so a stopped run resumes.
QAT_EPOCHS = 3
QAT_MIN_STEPS = 100
QAT_LR_SCALE = 0.1

_WEIGHTS = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0,
                                  quant_min=-127, quant_max=127, dtype=torch.qint8,
                                  qscheme=torch.per_channel_symmetric, ch_axis=0)
_ACTIVATIONS = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                      dtype=torch.quint8, qscheme=torch.per_tensor_affine)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution before it (in place, eval mode), leaving Identity."""
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            if not isinstance(seq[i], nn.BatchNorm2d):
                continue
            before = seq[i - 1]
            if isinstance(before, nn.Conv2d):
                seq[i - 1] = fuse_conv_bn_eval(before, seq[i])
            elif isinstance(before, LowRankConv1x1):
                before.expand = fuse_conv_bn_eval(before.expand, seq[i])
            else:
                raise TypeError(f"cannot fold a batch norm that follows {type(before).__name__}")
            seq[i] = nn.Identity()
    left = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise TypeError(f"batch norms left unfolded: {', '.join(left)}")
    return model


def add_fake_quant(model: nn.Module) -> list[RemovableHandle]:
    """Fake-quantize the weight and the input of every convolution and linear layer of ``model``."""
    handles = []
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        parametrize.register_parametrization(layer, "weight", _WEIGHTS())
        layer.input_fake_quant = _ACTIVATIONS()
        handles.append(layer.register_forward_pre_hook(_quantize_input))
    return handles


def _quantize_input(layer: nn.Module, args: tuple) -> tuple:
    return (layer.input_fake_quant(args[0]), *args[1:])


def remove_fake_quant(model: nn.Module, handles: list[RemovableHandle]) -> nn.Module:
    """Take the fake quantization off again: the trained float weights stay."""
    for handle in handles:
        handle.remove()
    for layer in [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        del layer.input_fake_quant
    return model


@dataclass(frozen=True)
class FineTuned:
    model: nn.Module  # plain again: batch norm folded, fake quantization removed
    record: dict  # the card's ``qat`` entry
    check_top1: np.ndarray  # the fake-quantized model's top-1 on the check batch, to check onnxruntime against


def quantization_aware(student: nn.Module, recipe: Recipe, check: torch.Tensor, out: Path,
                       progress: Progress) -> FineTuned:
    """A copy of ``student`` fine-tuned under fake quantization with the recipe's KD loss, teacher
    targets, augmentation and seed, checkpointed beside ``out`` every epoch."""
    model = fold_batch_norms(copy.deepcopy(student).cpu()).to(memory_format=torch.channels_last)
    handles = add_fake_quant(model)
    split, base = recipe.split, recipe.settings
    epochs = at_least_steps(QAT_EPOCHS, len(split.y_train), base.batch_size, QAT_MIN_STEPS, whole_epochs=True)
    settings = dataclasses.replace(base, epochs=epochs, lr=base.lr * QAT_LR_SCALE)
    # feature losses train adapters that are not checkpointed (train_model refuses them)
    checkpoint = None if needs_features(recipe.kd.loss) else checkpoint_file(
        out, "qat", kd=asdict(recipe.kd), qat=asdict(settings), start=_digest(student), **recipe.run_key())
    progress.log(f"export: quantization-aware training, {epochs:g} epochs at learning rate {settings.lr:g}, "
                 f"KD as in the export ({recipe.kd.describe()})")
    if checkpoint is not None and checkpoint.exists():
        progress.log(f"export: resuming quantization-aware training from {checkpoint}")
    torch.manual_seed(settings.seed)
    result = train_model(model, split.x_train, split.y_train, settings, kd=recipe.kd, checkpoint=checkpoint,
                         on_step=_status(progress), **recipe.targets)
    model.eval().apply(disable_observer)  # the ranges stay as trained while it predicts
    with torch.inference_mode():
        top1 = torch.cat([model(b).argmax(1) for b in check.split(256)]).numpy()
    remove_fake_quant(model, handles)
    model = model.to(memory_format=torch.contiguous_format)
    return FineTuned(model, {"epochs": epochs, "steps": result.steps, "lr": round(settings.lr, 6),
                   "seconds": round(result.seconds, 3), "batch_norm": "folded into the convolutions before fine-tuning",
                   "checkpointed": "every epoch" if checkpoint is not None else "no (feature loss)"}, top1)


def _status(progress: Progress) -> Callable[[int, int, float], None]:
    clock = TrainingClock(trainings=1)
    clock.next_training()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.status(f"quantization-aware training: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                        f"{clock.text(step, total)}")

    return on_step


def _digest(model: nn.Module) -> str:
    """The starting weights, in a checkpoint's name: a retrained student does not resume another's run."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
