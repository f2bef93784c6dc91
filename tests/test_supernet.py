"""The weight-sharing supernet: a member run on the shared weights is the extracted student."""

import optuna
import pytest
import torch

from nas_kd.model.spec import parse_summary
from nas_kd.search.space import load_space
from nas_kd.supernet.net import Supernet, SupernetShape, recalibrate_bn


def _members(space, n, seed=0):
    sampler, out = optuna.samplers.RandomSampler(seed=seed), []
    study = optuna.create_study(sampler=sampler)
    while len(out) < n:
        spec = space.sample(study.ask(), (1, 28, 28), 10)
        relu_full = spec.activation == "relu" and all(s.pointwise_rank is None for s in spec.stages)
        if relu_full:
            out.append(spec)
    return out


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = Supernet(SupernetShape.of(load_space("default"), 1, 10))
    with torch.no_grad():  # non-trivial batch norm affine parameters, so a wrong slice shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def test_the_shape_is_the_largest_each_knob_allows():
    shape = SupernetShape.of(load_space("default"), 1, 10)
    assert shape.stem_channels == 32 and shape.stage_channels == (48, 128, 256, 384)
    assert shape.stage_depth == (2, 3, 3, 3) and shape.kernel == 5 and shape.expansion == 4
    assert shape.head_channels == 256 and shape.first_last_stage == 2


def test_a_member_on_shared_weights_is_its_extracted_student(supernet):
    x = torch.randn(6, 1, 28, 28)
    specs = _members(load_space("default"), 8)
    specs.append(parse_summary("stem16/s1 | ds k3 c24 s2 x1 | ds k3 c64 s2 x2 | ds k3 c128 s2 x2 | fc | relu", 1, 10))
    for spec in specs:
        student = supernet.extract(spec).train()
        with torch.no_grad():
            assert torch.allclose(supernet(x, spec), student(x), atol=1e-4), spec.summary()


def test_a_space_built_for_sharing_has_expansion_1_blocks_that_extract_exactly():
    from tests.conftest import ROOT

    space = load_space(str(ROOT / "benchmarks" / "spaces" / "shared.yaml"))
    torch.manual_seed(1)
    net = Supernet(SupernetShape.of(space, 1, 10))
    specs = _members(space, 6, seed=3)
    assert any(st.expansion == 1 for spec in specs for st in spec.stages)
    x = torch.randn(4, 1, 28, 28)
    for spec in specs:
        with torch.no_grad():
            assert torch.allclose(net(x, spec), net.extract(spec).train()(x), atol=1e-4), spec.summary()


def test_members_share_weights_and_training_one_moves_another(supernet):
    small = parse_summary("stem16/s1 | ds k3 c24 s2 x1 | ds k3 c64 s2 x2 | fc | relu", 1, 10)
    big = parse_summary("stem32/s1 | ds k5 c48 s2 x2 | ir4 k5 c128 s2 x3 | ds k3 c256 s2 x1 | fc | relu", 1, 10)
    before = supernet.extract(small).state_dict()
    net = Supernet(supernet.shape)
    net.load_state_dict(supernet.state_dict())
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 28, 28), big), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    after = net.extract(small).state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "stem.0.weight" in moved and "stages.0.0.dw.0.weight" in moved  # shared with the big member
    assert "classifier.weight" not in moved  # a 2-stage member's classifier is its own


def test_a_non_member_is_refused(supernet):
    for line in ("stem16/s1 | ds k3 c24 s2 x1 pw.5 | ds k3 c64 s2 x2 | fc | relu",  # low rank
                 "stem16/s1 | ds k3 c24 s2 x1 | ds k3 c64 s2 x2 | fc | hardswish",  # other activation
                 "stem16/s1 | ds k3 c64 s2 x1 | ds k3 c64 s2 x2 | fc | relu",  # stage 1 wider than 48
                 "stem16/s1 | ds k3 c24 s2 x1 | fc | relu"):  # one stage
        with pytest.raises(ValueError, match="not a member"):
            supernet.extract(parse_summary(line, 1, 10))


def test_recalibration_gives_an_extracted_member_its_own_statistics(supernet):
    spec = parse_summary("stem24/s1 | ds k3 c24 s2 x1 | ir3 k5 c64 s2 x2 | head128 | fc | relu", 1, 10)
    student = supernet.extract(spec)
    batches = [torch.randn(64, 1, 28, 28) * 2 + 1 for _ in range(4)]
    recalibrate_bn(student, batches)
    assert not student.training
    everything = torch.cat(batches)
    with torch.no_grad():  # the stem's statistics are the plain mean over every image seen
        stem_out = torch.nn.functional.conv2d(everything, student.stem[0].weight, padding=1)
    assert torch.allclose(student.stem[1].running_mean, stem_out.mean((0, 2, 3)), atol=1e-4)
    assert student.stem[1].momentum == 0.1


def test_sandwich_training_on_tiny_data_lowers_the_loss_and_every_member_learns(tmp_path):
    from nas_kd.distill.losses import KDSettings
    from nas_kd.model.cost import analytic_flops
    from nas_kd.supernet.train import Sandwich, inherited_accuracy, member_pool
    from nas_kd.train import TrainSettings, train_model
    from tests.tiny import make_tiny

    data, space = make_tiny(n_train=512, n_test=256), load_space("default")
    torch.manual_seed(0)
    net = Supernet(SupernetShape.of(space, 1, 4))
    pool = member_pool(space, net, (1, 12, 12), budget_flops=400_000, size=10)
    flops = [analytic_flops(s, (1, 12, 12)) for s in pool]
    assert len(pool) == 10 and flops == sorted(flops) and flops[-1] <= 400_000
    members = [pool[0], pool[5], pool[-1]]
    x_val, y_val = data.x_test, data.y_test
    before = [inherited_accuracy(net, s, data.x_train, x_val, y_val) for s in members]
    losses = []
    sandwich = Sandwich(net, pool, draws=2, seed=0)
    train_model(sandwich, data.x_train, data.y_train, TrainSettings(epochs=6, batch_size=32, lr=0.05),
                kd=KDSettings(alpha=0.0), on_step=lambda step, total, loss: losses.append(loss),
                checkpoint=tmp_path / "supernet.ckpt")
    after = [inherited_accuracy(net, s, data.x_train, x_val, y_val) for s in members]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    assert int(sandwich.steps_done) == len(losses)  # one draw per step: a resumed run draws the same
    assert all(a > 0.6 and a > b + 0.2 for a, b in zip(after, before, strict=True)), (before, after)


def test_the_step_members_are_the_largest_the_smallest_and_draws_fixed_by_seed_and_step():
    from nas_kd.supernet.train import Sandwich, member_pool

    space = load_space("default")
    net = Supernet(SupernetShape.of(space, 1, 10))
    pool = member_pool(space, net, (1, 28, 28), budget_flops=5_000_000, size=20)
    a, b = Sandwich(net, pool, draws=3, seed=7), Sandwich(net, pool, draws=3, seed=7)
    first = a.step_members()
    assert first[0] is pool[-1] and first[1] is pool[0] and len(first) == 5
    a.steps_done += 5
    b.steps_done += 5
    assert a.step_members() == b.step_members() != first
