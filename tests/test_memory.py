"""The int8 footprint (peak activation memory, model size) counted from a spec, against hand counts
and against the built network's own tensors."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from nas_kd.model.builder import build_student
from nas_kd.model.layers import DepthwiseSeparable, InvertedResidual
from nas_kd.model.memory import count_footprint
from nas_kd.model.spec import parse_summary
from nas_kd.search.space import load_space


def test_a_small_network_counted_by_hand():
    # 1×8×8 image (64 B) → stem 4×8×8 (256 B) → ds block with a skip → pool → fc to 10 classes
    spec = parse_summary("stem4/s1 | ds k3 c4 s1 x1 | fc | relu", 1, 10)
    f = count_footprint(spec, (1, 8, 8))
    # stem 64 + 256; depthwise 256 + 256; pointwise 256 + 256 + the kept block input 256
    assert f.peak_memory == 768 and f.peak_layer == "stage 0 block 0 pointwise"
    # weights: stem 4·9, depthwise 4·9, pointwise 4·4, fc 4·10; int32 biases: 4 + 4 + 4 + 10
    assert f.model_size == (36 + 36 + 16 + 40) + 4 * (4 + 4 + 4 + 10)


def test_an_inverted_residual_with_low_rank_convs_counted_by_hand():
    # 2×4×4 → stem 8×2×2 (s2) → ir2 (8 → 16 → 8, skip) with rank-½ 1×1 convs → head 16 → fc.5
    spec = parse_summary("stem8/s2 | ir2 k3 c8 s1 x1 pw.5 | head16 | fc.5 | relu", 2, 4)
    f = count_footprint(spec, (2, 4, 4))
    # live bytes, layer by layer: stem 32 + 32; expand reduce (rank 4) 32 + 16, expand 16 + 64;
    # depthwise 64 + 64 + kept 32 = 160; project reduce (rank 4) 64 + 16 + 32, project 16 + 32 + 32;
    # head 32 + 64; pool 64 + 16; classifier reduce (rank 2) 16 + 2, classifier 2 + 4
    assert f.peak_memory == 160 and f.peak_layer == "stage 0 block 0 depthwise"
    weights = 8 * 2 * 9 + (4 * 8 + 16 * 4) + 16 * 9 + (4 * 16 + 8 * 4) + 16 * 8 + (2 * 16 + 4 * 2)
    biases = 8 + 16 + 16 + 8 + 16 + 4
    assert f.model_size == weights + 4 * biases


def _measured(model: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int]:
    """Peak live values seen by hooks on the built network, and its int8 size from its modules."""
    peaks, kept = [0], []

    def block_in(_m, inputs):
        kept.append(inputs[0].numel() if _m.has_skip else 0)

    def block_out(_m, _inputs, _out):
        kept.pop()

    def mark_block_input(block, inputs):
        for c in block.modules():
            c._block_input = inputs[0]

    def layer(m, inputs, out):
        first = inputs[0] is m._block_input if hasattr(m, "_block_input") else False
        held = kept[-1] if kept and not first else 0
        peaks[0] = max(peaks[0], inputs[0].numel() + out.numel() + held)

    for m in model.modules():
        if isinstance(m, (DepthwiseSeparable, InvertedResidual)):
            m.register_forward_pre_hook(block_in)
            m.register_forward_hook(block_out)
            m.register_forward_pre_hook(mark_block_input)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)):
            m.register_forward_hook(layer)
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    size = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    size += 4 * sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    size += 4 * sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    return peaks[0], size


@pytest.mark.parametrize("space_name", ["default", "default-v1"])
def test_the_count_matches_the_built_networks_tensors(space_name):
    space, shape = load_space(space_name), (1, 28, 28)
    sampler = optuna.samplers.RandomSampler(seed=1)
    study = optuna.create_study(sampler=sampler)
    for _ in range(25):
        trial = study.ask()
        spec = space.sample(trial, shape, 10)
        f = count_footprint(spec, shape)
        assert (f.peak_memory, f.model_size) == _measured(build_student(spec), shape), spec.summary()
        study.tell(trial, 0.0)
