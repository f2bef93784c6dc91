"""Cost of a student before any training: FLOPs (fvcore) and parameters at the real input shape.

Convention (stated in every output): **one fused multiply-add counts as one FLOP** (fvcore's
convention, i.e. MACs), counted over every convolution and linear layer. Not counted: batch norm
(folded into the preceding convolution when deployed), elementwise adds of residual connections,
pooling and activations. Parameters are all trainable parameters, batch norm included.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from nas_kd.model.memory import walk_spec
from nas_kd.model.spec import ArchSpec

FLOP_CONVENTION = (
    "FLOPs = fvcore count at the real input shape, batch 1: one multiply-add = one FLOP (MACs), "
    "over every conv and linear layer; batch norm (folded at deployment), residual adds, pooling "
    "and activations are not counted"
)


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int


def _counted_ops() -> dict:
    """fvcore's own handles for conv and matrix products only (see FLOP_CONVENTION)."""
    from fvcore.nn import jit_handles as h

    return {
        "aten::_convolution": h.conv_flop_jit,
        "aten::linear": h.linear_flop_jit,
        "aten::addmm": h.addmm_flop_jit,
        "aten::matmul": h.matmul_flop_jit,
        "aten::mm": h.matmul_flop_jit,
        "aten::bmm": h.bmm_flop_jit,
        "aten::einsum": h.einsum_flop_jit,
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """fvcore's FLOP count (MACs) of ``model`` on one input of ``input_shape`` (C, H, W).

    Raises RuntimeError if any Conv2d or Linear layer was left uncounted, which other counters
    do silently on modules they do not know.
    """
    from fvcore.nn import FlopCountAnalysis  # imported lazily: slow, and noisy with warnings

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x).clear_op_handles().set_op_handle(**_counted_ops())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            logging.getLogger("fvcore").setLevel(logging.ERROR)
            total = int(analysis.total())
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    missed = [
        name for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and by_module.get(name, 0) <= 0
    ]
    if missed:
        raise RuntimeError(f"fvcore left layers uncounted: {missed}")
    return total


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """FLOPs (fvcore, MACs) and trainable parameters of ``model`` at ``input_shape``."""
    return Cost(flops=count_flops(model, input_shape), params=count_params(model))


def count_thop(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """thop's MAC count, for showing beside fvcore's (thop also counts batch norm)."""
    import copy

    from thop import profile

    clone = copy.deepcopy(model).eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = profile(clone, inputs=(x,), verbose=False)
    return int(macs)


def analytic_flops(spec: ArchSpec, input_shape: tuple[int, int, int]) -> int:
    """The same convention computed by hand from the spec: conv MACs = out·(in/groups)·k²·H'·W'.

    Independent of the builder's code, so tests can check fvcore and the builder against it;
    microseconds per call, so the search space's cheapest member can be found by enumeration."""
    return walk_spec(spec, input_shape).macs
