import json

import pytest
import torch

from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec, StageSpec

SPEC = ArchSpec(
    in_channels=1, num_classes=10, stem_channels=16, stem_stride=1,
    stages=(StageSpec("ds", 2, 24, 3, 2), StageSpec("ir", 3, 48, 5, 2, expansion=4, pointwise_rank=0.5)),
    head_channels=128, classifier_rank=0.25, activation="hardswish",
)


def test_spec_json_round_trip_is_exact():
    text = SPEC.to_json()
    again = ArchSpec.from_json(text)
    assert again == SPEC
    assert again.to_json() == text
    assert json.loads(text)["stages"][1]["expansion"] == 4


def test_round_tripped_spec_builds_the_same_module():
    torch.manual_seed(0)
    a = build_student(SPEC)
    torch.manual_seed(0)
    b = build_student(ArchSpec.from_json(SPEC.to_json()))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert a(x).shape == (2, 10)


def test_summary_is_one_readable_line():
    assert SPEC.summary() == "stem16/s1 | ds k3 c24 s2 x2 | ir4 k5 c48 s2 x3 pw.5 | head128 | fc.25 | hardswish"


def test_low_rank_layers_are_built_where_the_spec_says():
    from nas_kd.model.layers import LowRankConv1x1, LowRankLinear

    model = build_student(SPEC)
    assert isinstance(model.classifier, LowRankLinear)
    assert model.classifier.reduce.out_features == 3  # 0.25 · min(128, 10), rounded half up
    low = [m for m in model.stages[1].modules() if isinstance(m, LowRankConv1x1)]
    assert len(low) == 6  # expand and project of 3 blocks
    assert not any(isinstance(m, LowRankConv1x1) for m in model.stages[0].modules())


@pytest.mark.parametrize(
    "mutate, message",
    [(lambda d: d.update(activation="gelu"), "activation"),
     (lambda d: d["stages"][0].update(kernel=4), "odd kernel"),
     (lambda d: d["stages"][0].update(block="conv"), "block"),
     (lambda d: d.update(surprise=1), "unknown field"),
     (lambda d: d.update(stages=[]), "at least one stage"),
     (lambda d: d.update(classifier_rank=1.5), "classifier_rank")],
)
def test_invalid_specs_are_refused_clearly(mutate, message):
    d = SPEC.to_dict()
    mutate(d)
    with pytest.raises(UserError, match=message):
        ArchSpec.from_dict(d)
