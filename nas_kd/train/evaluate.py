"""A trained model's logits and top-1 accuracy, computed in eval mode without autograd."""

from __future__ import annotations

import torch
from torch import nn

from nas_kd.train.device import device_for


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
