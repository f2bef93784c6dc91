"""FLOP counts checked against formulas worked by hand, and fvcore against the analytic count."""

import optuna
import pytest
import torch
from torch import nn

from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops, count_cost, count_flops, count_params
from nas_kd.model.layers import DepthwiseSeparable, InvertedResidual, LowRankConv1x1, LowRankLinear
from nas_kd.model.spec import ArchSpec, StageSpec
from nas_kd.search.space import load_space


def test_depthwise_separable_block():
    block = DepthwiseSeparable(8, 16, kernel=3, stride=1, act="relu")
    # depthwise: 8 channels · 3·3 · 10·10; pointwise: 8·16 · 10·10
    assert count_flops(block, (8, 10, 10)) == 8 * 9 * 100 + 8 * 16 * 100


def test_inverted_residual_block_with_stride():
    block = InvertedResidual(8, 16, kernel=5, stride=2, expansion=4, act="relu6")
    # expand 8→32 at 10×10; depthwise 5×5 on 32 channels at 5×5 out; project 32→16 at 5×5
    assert count_flops(block, (8, 10, 10)) == 8 * 32 * 100 + 32 * 25 * 25 + 32 * 16 * 25


def test_low_rank_pair_costs_in_plus_out_times_rank():
    assert count_flops(LowRankConv1x1(64, 96, rank=12), (64, 7, 7)) == (64 + 96) * 12 * 49
    linear = nn.Sequential(nn.Flatten(), LowRankLinear(128, 10, rank=8))
    assert count_flops(linear, (128, 1, 1)) == (128 + 10) * 8
    assert count_params(LowRankLinear(128, 10, rank=8)) == 128 * 8 + 8 * 10 + 10


def test_batch_norm_pooling_and_activations_are_not_counted():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardswish(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert count_flops(model, (3, 6, 6)) == 4 * 3 * 9 * 36 + 4 * 2


def test_an_uncounted_layer_is_an_error_not_a_silent_zero():
    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.unused = nn.Linear(2, 2)  # never called: a counter would report 0 for it

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(RuntimeError, match="unused"):
        count_flops(Sneaky(), (1, 8, 8))


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_fvcore_matches_the_analytic_count_on_random_specs(shape):
    space = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=shape[1]))
    seen_blocks, seen_ranks = set(), set()
    for _ in range(12):
        spec = space.sample(study.ask(), shape, 10)
        model = build_student(spec)
        assert count_flops(model, shape) == analytic_flops(spec, shape), spec.summary()
        seen_blocks |= {s.block for s in spec.stages}
        seen_ranks |= {s.pointwise_rank is None for s in spec.stages}
    assert seen_blocks == {"ds", "ir"} and seen_ranks == {True, False}


def test_count_cost_leaves_the_model_in_training_mode():
    spec = ArchSpec(1, 10, 8, 1, (StageSpec("ds", 1, 8, 3, 2),))
    model = build_student(spec).train()
    cost = count_cost(model, (1, 12, 12))
    assert model.training
    assert cost.params == count_params(model)
    assert cost.flops == analytic_flops(spec, (1, 12, 12))
    x = torch.randn(2, 1, 12, 12)
    assert model(x).shape == (2, 10)
