from pathlib import Path

import optuna
import pytest

from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.cost import analytic_flops
from nas_kd.model.spec import parse_summary
from nas_kd.search.space import SPACES_DIR, load_space, parse_space

ROOT = Path(__file__).parent.parent
SPACE_FILES = [*SPACES_DIR.glob("*.yaml"), *(ROOT / "benchmarks" / "spaces").glob("*.yaml")]

GOOD = """
name: small
stem: {channels: [8, 16], stride: [1, 2]}
stages:
  count: {low: 1, high: 3}
  depth: [1, 2]
  channels: {low: 8, high: 32, step: 8}
  kernel: [3, 5, 7]
  stride: [1, 2]
  block: [ds, ir]
  expansion: [2, 4]
  pointwise_rank: [full, 0.5]
head: {channels: [0, 32], classifier_rank: [full, 0.5]}
activation: [relu, hardswish]
"""


def _random_specs(space, shape, n=25, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask(), shape, 10) for _ in range(n)]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_default_space_gives_valid_networks_for_any_input(shape):
    import torch

    space = load_space("default")
    for spec in _random_specs(space, shape, n=10):
        size = shape[1]
        for s in [spec.stem_stride] + [st.stride for st in spec.stages]:
            size = (size - 1) // s + 1
        assert size >= space.min_feature_size
        out = build_student(spec).eval()(torch.zeros(2, *shape))
        assert out.shape == (2, 10)


def test_custom_space_is_respected():
    space = parse_space(GOOD)
    for spec in _random_specs(space, (1, 28, 28)):
        assert spec.stem_channels in (8, 16)
        assert 1 <= len(spec.stages) <= 3
        for st in spec.stages:
            assert st.channels in (8, 16, 24, 32) and st.kernel in (3, 5, 7)
            assert st.expansion in ((2, 4) if st.block == "ir" else (1,))
            assert st.pointwise_rank in (None, 0.5)


def test_cheapest_is_a_lower_bound_of_what_the_space_samples():
    space = parse_space(GOOD)
    spec, flops = space.cheapest((1, 28, 28), 10)
    assert flops == analytic_flops(spec, (1, 28, 28))
    assert all(analytic_flops(s, (1, 28, 28)) >= flops for s in _random_specs(space, (1, 28, 28), n=60))


def test_fixed_values_are_not_sampled():
    space = parse_space(GOOD.replace("activation: [relu, hardswish]", "activation: relu"))
    study = optuna.create_study()
    trial = study.ask()
    spec = space.sample(trial, (1, 28, 28), 10)
    assert spec.activation == "relu" and "activation" not in trial.params


@pytest.mark.parametrize(
    "text, message",
    [("stem: [", "not valid YAML"),
     ("- 1\n- 2", "must be a mapping"),
     (GOOD.replace("kernel: [3, 5, 7]", "kernel: [3, 4]"), "stages.kernel: value 4"),
     (GOOD.replace("block: [ds, ir]", "block: [ds, resnet]"), "stages.block"),
     (GOOD.replace("stride: [1, 2]\n  block", "stride: [1, 3]\n  block"), "stages.stride: value 3"),
     (GOOD.replace("pointwise_rank: [full, 0.5]", "pointwise_rank: [1.5]"), "pointwise_rank"),
     (GOOD.replace("  depth: [1, 2]\n", ""), "missing 'stages.depth'"),
     (GOOD + "extra: 1\n", "unknown key"),
     (GOOD.replace("count: {low: 1, high: 3}", "count: {low: 3, high: 1}"), "low ≤ high"),
     (GOOD.replace("channels: [0, 32]", "channels: []"), "empty list"),
     (GOOD + "warm_start:\n  big: stem16/s1 | ds k3 c64 s2 x1 | fc | relu\n", "warm_start big: .*s1_channels = 64"),
     (GOOD + "warm_start:\n  bad: stem16 | fc | relu\n", "warm_start bad: cannot read architecture"),
     (GOOD + "warm_start: [a, b]\n", "warm_start maps a name")],
)
def test_bad_space_files_say_what_is_wrong(text, message):
    with pytest.raises(UserError, match=message):
        parse_space(text, origin="my.yaml")


def test_every_sampled_spec_is_enqueueable_and_comes_back_identical():
    space = parse_space(GOOD)
    for spec in _random_specs(space, (1, 28, 28), n=40, seed=3):
        assert parse_summary(spec.summary(), 1, 10) == spec
        assert space.sample(optuna.trial.FixedTrial(space.params_for(spec)), (1, 28, 28), 10) == spec


def test_default_space_warm_starts_from_its_hand_designs_within_budget():
    from nas_kd.model.cost import count_cost

    designs = dict(load_space("default").warm_start)
    flops = {n: count_cost(build_student(parse_summary(line, 1, 10)), (1, 28, 28)).flops for n, line in designs.items()}
    assert 4_000_000 < flops["mobilenet-5m"] <= 5_000_000 and flops["mobilenet-v1-1m"] <= 1_000_000
    assert 4_000_000 < flops["mobilenet-4m-wide"] <= 5_000_000
    # the benchmarks' hand designs include these same students (and earlier defaults' designs)
    import json
    from pathlib import Path

    bench = json.loads((Path(__file__).parent.parent / "benchmarks" / "hand_designs.json").read_text())
    assert {n: bench[n] for n in designs} == {n: parse_summary(line, 1, 10).to_dict() for n, line in designs.items()}


GROWING = GOOD.replace("  channels: {low: 8, high: 32, step: 8}\n", """  channels:
    - {low: 8, high: 16, step: 8}
    - [16, 32]
    - {low: 64, high: 256, step: 64}
""")


def test_per_stage_channels_grow_with_depth():
    space = parse_space(GROWING)
    allowed = [(8, 16), (16, 32), (64, 128, 192, 256)]
    for spec in _random_specs(space, (1, 28, 28), n=40):
        for st, options in zip(spec.stages, allowed, strict=False):
            assert st.channels in options
    values = space.param_values()
    assert [values[f"s{i}_channels"] for i in (1, 2, 3)] == [list(o) for o in allowed]
    assert values["s1_kernel"] == values["s3_kernel"] == [3, 5, 7]  # a single knob is every position's
    spec, _ = space.cheapest((1, 28, 28), 10)
    assert spec.stages[0].channels == 8
    wide = parse_summary("stem8/s1 | ds k3 c16 s2 x1 | ds k3 c32 s2 x1 | ds k3 c256 s1 x1 | fc | relu", 1, 10)
    assert space.sample(optuna.trial.FixedTrial(space.params_for(wide)), (1, 28, 28), 10) == wide
    with pytest.raises(UserError, match="s1_channels = 32"):  # 32 is offered at stage 2, not stage 1
        space.params_for(parse_summary("stem8/s1 | ds k3 c32 s2 x1 | fc | relu", 1, 10))


def test_any_stage_knob_can_be_given_per_stage_position():
    space = parse_space(GOOD.replace("block: [ds, ir]", "block: [[ds], [ds, ir], [ir]]"))
    specs = _random_specs(space, (1, 28, 28), n=30)
    assert all(spec.stages[0].block == "ds" for spec in specs)
    assert all(spec.stages[2].block == "ir" for spec in specs if len(spec.stages) == 3)
    assert {spec.stages[1].block for spec in specs if len(spec.stages) > 1} == {"ds", "ir"}


@pytest.mark.parametrize(
    "channels, message",
    [("[{low: 8, high: 16}, {low: 16, high: 32}]", r"stages.channels: 2 per-stage knobs, but stages.count "
                                                   r"allows up to 3 stages"),
     ("[{low: 8, high: 16}, 32, [64]]", r"stages.channels: .*stage 2 has 32 \(write \[32\]"),
     ("[{low: 8, high: 16}, {low: 32, high: 16}, [64]]", r"stages.channels \(stage 2\): a range needs .*low ≤ high"),
     ("[[8], [0], [64]]", r"stages.channels \(stage 2\): value 0 is not allowed"),
     ("[[8], [], [64]]", r"stages.channels \(stage 2\): an empty list")],
)
def test_a_bad_per_stage_list_is_one_clear_error(channels, message):
    text = GOOD.replace("channels: {low: 8, high: 32, step: 8}", f"channels: {channels}")
    with pytest.raises(UserError, match=f"search space my.yaml: {message}"):
        parse_space(text, origin="my.yaml")


@pytest.mark.parametrize("path", sorted(SPACE_FILES), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_and_candidate_space_parses_with_its_warm_starts(path):
    space = load_space(str(path))
    assert space.warm_start and space.cheapest((1, 28, 28), 10)[1] < 5_000_000


def test_the_previous_default_space_is_kept_byte_for_byte_so_its_studies_resume():
    # the sha256 every study created with the default space before the per-stage channels recorded
    assert load_space("default-v1").sha256 == "4582b2721300a1b5a77e8e63cd5934072e87d55e2b44ad96c07c81a6c7558b29"


def test_unknown_space_name_lists_the_known_ones():
    with pytest.raises(UserError, match="default"):
        load_space("no-such-space")


def _int8_ops(spec_line: str, folder: Path) -> set[str]:
    """Op types of onnxruntime's optimized graph for the student quantized as ``--int8`` does."""
    import onnx
    import onnxruntime as ort
    import torch

    from nas_kd.export.quantize import quantize_onnx
    from nas_kd.model.latency import export_onnx

    torch.manual_seed(0)
    model = build_student(parse_summary(spec_line, 1, 10)).eval()
    images = torch.rand(32, 1, 28, 28)
    export_onnx(model, images[:1], folder / "m.onnx")
    quantize_onnx(folder / "m.onnx", folder / "m.int8.onnx", images)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "m.opt.onnx")
    options.log_severity_level = 3  # its note on hardware-specific optimized graphs
    ort.InferenceSession(str(folder / "m.int8.onnx"), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(str(folder / "m.opt.onnx")).graph.node}


def test_int8_space_students_run_integer_throughout_where_hard_swish_ones_do_not(tmp_path):
    space = load_space("int8")
    acts = {spec.activation for spec in _random_specs(space, (1, 28, 28), n=40)}
    assert acts == {"relu", "relu6"} and all(line.endswith(("| relu", "| relu6")) for _, line in space.warm_start)
    blocks = "stem16/s1 | ds k3 c24 s2 x1 | ir3 k3 c48 s2 x2 pw.5 | head128 | fc"
    for act in ("relu", "relu6"):  # fused into QLinearConv: one Quantize in, one Dequantize out
        (tmp_path / act).mkdir()
        ops = _int8_ops(f"{blocks} | {act}", tmp_path / act)
        assert "QLinearConv" in ops and not ops & {"Conv", "Relu", "Clip", "HardSigmoid", "Mul"}, ops
    (tmp_path / "hs").mkdir()
    ops = _int8_ops(f"{blocks} | hardswish", tmp_path / "hs")
    assert "HardSigmoid" in ops  # float, between a Dequantize and a Quantize at every activation
