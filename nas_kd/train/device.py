"""Where a model computes."""

from __future__ import annotations

import torch
from torch import nn


def device_for(model: nn.Module) -> torch.device:
    """The device of the model's parameters; the CPU for a model without any (an ONNX teacher)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
