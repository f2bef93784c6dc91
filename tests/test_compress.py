"""Compress from a real tiny study: pruned to the budget, counted as saved, loaded back, checked in
onnxruntime, the schedule in the card, bad input refused before any training, an interrupted run resumed."""

import csv
import importlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nas_kd
from nas_kd.compress import main as compress_main
from nas_kd.compress.prune import prune_channels
from nas_kd.compress.schedule import flop_targets
from nas_kd.compress.shapes import PRUNED_SHAPES, apply_shapes, layer_shapes
from nas_kd.errors import UserError
from nas_kd.export import main as export_main
from nas_kd.export.pick import pick_trial
from nas_kd.export.retrain import resume_folder
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_cost, count_flops
from nas_kd.model.spec import ArchSpec, parse_summary
from nas_kd.quantity import format_quantity
from nas_kd.search.cli import main as search_main
from nas_kd.study.records import trial_records
from nas_kd.study.storage import open_named_study

pytestmark = pytest.mark.shipped  # the tiny teacher is shipped with the tests: none is trained here
SHAPE = (1, 12, 12)
TO = 60_000
RUN = ("--to", "60k", "--steps", "2", "--epochs", "2", "--finetune-epochs", "2")


@pytest.fixture(scope="module", autouse=True)
def _shipped_for_the_module_fixtures(shipped_teachers):
    """The marker shows the shipped teachers to each test; the module's fixtures run before it does."""
    before = os.environ["NAS_KD_SHIPPED_DIR"]
    os.environ["NAS_KD_SHIPPED_DIR"] = str(shipped_teachers)
    yield
    os.environ["NAS_KD_SHIPPED_DIR"] = before


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    assert search_main(["--dataset", "tiny", "--budget", "1M", "--min-steps", "0", "--epochs", "4",
                        "--batch-size", "32", "--trials", "2",
                        "--promote-until", "0", "--studies-dir", str(root), "--study-name", "ex",
                        "--cache-dir", str(root / "cache"), "--threads", "1"]) == 0
    return root


def compress(study_root, *args):
    return compress_main(["--study-name", "ex", "--studies-dir", str(study_root),
                          "--cache-dir", str(study_root / "cache"), "--threads", "1", *args])


@pytest.fixture(scope="module")
def pruned(study_root):
    assert compress(study_root, *RUN, "--out", str(study_root / "pruned")) == 0
    return study_root / "pruned"


def _card(folder):
    return json.loads((folder / "model_card.json").read_text())


def test_the_pruned_student_fits_the_budget_as_counted_on_the_saved_model(study_root, pruned):
    card = _card(pruned)
    best = pick_trial(trial_records(open_named_study("ex", str(study_root), None)))
    model = nas_kd.load_student(pruned)
    assert card["trial"] == best.number and best.flops > TO
    assert card["flops"] == count_flops(model, SHAPE) <= TO  # fvcore's count of what load_student returns
    assert card["params"] == count_cost(model, SHAPE).params < count_cost(build_student(
        ArchSpec.from_dict(best.spec)), SHAPE).params
    spec = ArchSpec.from_json((pruned / "spec.json").read_text())
    assert spec.to_dict() == best.spec  # the architecture before pruning, beside the shapes after it
    assert layer_shapes(model) == json.loads((pruned / PRUNED_SHAPES).read_text()) != layer_shapes(build_student(spec))
    for name in ("weights.safetensors", "model.ts", "model.onnx", "model_card.md"):
        assert (pruned / name).is_file(), name
    assert not resume_folder(pruned).exists() and not [p for p in study_root.iterdir() if p.name.startswith(".pruned-")]


def test_load_student_torchscript_and_onnx_give_the_same_logits(pruned):
    import onnxruntime as ort

    x = torch.randn(16, *SHAPE)
    with torch.inference_mode():
        loaded = nas_kd.load_student(pruned)(x).numpy()
        scripted = torch.jit.load(str(pruned / "model.ts"))(x).numpy()  # traced from the pruned model in memory
    onnx = ort.InferenceSession(str(pruned / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    assert np.abs(loaded - scripted).max() < 1e-5
    assert np.abs(onnx - loaded).max() < 1e-4 and _card(pruned)["onnx_max_abs_diff"] < 1e-4


def test_the_card_holds_the_schedule_with_val_accuracy_per_step(pruned):
    card = _card(pruned)
    p = card["pruning"]
    steps = p["schedule"]
    assert [s["step"] for s in steps] == [1, 2] and steps[-1]["target_flops"] == TO
    assert steps[0]["flops_before"] == p["start"]["flops"] > steps[0]["flops_after"] == steps[1]["flops_before"]
    assert steps[1]["flops_after"] == card["flops"] and steps[1]["params_after"] == card["params"]
    assert all(0 <= s["val_accuracy"] <= 1 and 0 <= s["val_accuracy_pruned"] <= 1 and s["epochs"] == 2 for s in steps)
    assert card["val_accuracy"] == steps[-1]["val_accuracy"]
    assert p["start"]["from"] == "trained here" and p["start"]["epochs"] == 2 and p["total_epochs"] == 6
    assert "torch-pruning" in p["method"] and "L2" in p["method"]
    md = (pruned / "model_card.md").read_text()
    assert "## Pruning" in md and f"| 2 | {steps[1]['flops_before']:,} | {card['flops']:,} |" in md


def test_bad_input_is_one_line_exit_2_and_writes_nothing(study_root, pruned, capsys, tmp_path):
    own = _card(pruned)["pruning"]["start"]["flops"]
    cases = [
        (["--to", "10M"], f"--to 10M (10,000,000) FLOPs is not below trial {_card(pruned)['trial']}'s own cost, "
                          f"{format_quantity(own)} ({own:,}) FLOPs"),  # both numbers
        (["--to", "lots"], "cannot read --to budget 'lots'"),
        (["--to", "1k"], "cannot be reached by pruning: the lowest it reaches is"),
        (["--to", "60k", "--trial", "999"], "no trial 999"),
        (["--to", "60k", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["--to", "60k", "--finetune-epochs", "0"], "--finetune-epochs must be above 0"),
        (["--to", "60k", "--from-export", str(tmp_path)], "is not a finished export folder"),
        (["--to", "60k", "--from-export", str(pruned)], "is already pruned"),
    ]
    for args, message in cases:
        out = tmp_path / "never"
        assert compress(study_root, *args, "--out", str(out)) == 2, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line]
        assert errors == [err.splitlines()[-1]] and errors[0].startswith("error: ") and message in err, (args, err)
        assert not out.exists() and not resume_folder(out).exists()


def test_an_interrupted_compress_resumes_to_the_same_student(study_root, pruned, monkeypatch, capsys):
    import nas_kd.compress.schedule as schedule

    real = schedule.train_model

    def stopped_in_step_two(*args, **kwargs):
        inner = kwargs["on_step"]

        def on_step(step, total, loss):
            inner(step, total, loss)
            if kwargs["checkpoint"].name.startswith("prune2-") and step == total * 3 // 4:  # its first epoch is saved
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(schedule, "train_model", stopped_in_step_two)
    out = study_root / "resumed"
    assert compress(study_root, *RUN, "--out", str(out)) == 130
    assert "the same command resumes it" in capsys.readouterr().err
    assert not out.exists() and list(resume_folder(out).glob("prune2-*.pt"))

    monkeypatch.setattr(schedule, "train_model", real)
    assert compress(study_root, *RUN, "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "resuming KD training" in err and "resuming step 1/2 fine-tuning" in err and "resuming step 2/2" in err
    whole, resumed = load_file(pruned / "weights.safetensors"), load_file(out / "weights.safetensors")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert _card(out)["pruning"]["schedule"] == [{**s, "train_seconds": r["train_seconds"]} for s, r in
                                                 zip(_card(pruned)["pruning"]["schedule"],
                                                     _card(out)["pruning"]["schedule"], strict=True)]


def test_pruning_starts_from_a_finished_export_of_the_trial(study_root, pruned, capsys):
    export = study_root / "export"
    assert export_main(["--study-name", "ex", "--studies-dir", str(study_root), "--cache-dir",
                        str(study_root / "cache"), "--epochs", "2", "--seed", "5", "--threads", "1",
                        "--out", str(export)]) == 0
    out = study_root / "from-export"
    assert compress(study_root, "--to", "60k", "--steps", "1", "--from-export", str(export), "--out", str(out)) == 0
    card, made = _card(out), _card(export)
    start = card["pruning"]["start"]
    assert start["from"] == "export" and start["epochs"] == 2 and start["flops"] == made["flops"]
    assert start["test_accuracy"] == made["test_accuracy"] and card["training"]["seed"] == 5  # the export's recipe
    assert card["pruning"]["finetune_epochs"] == pytest.approx(0.2) and card["flops"] <= TO
    capsys.readouterr()
    assert compress(study_root, "--to", "60k", "--from-export", str(export), "--epochs", "3") == 2
    assert "give one of them" in capsys.readouterr().err


def test_saved_shapes_rebuild_a_pruned_network_exactly():
    spec = parse_summary("stem8/s1 | ir3 k3 c8 s1 x2 pw.5 | ds k3 c16 s2 x2 | head32 | fc.5 | relu6", 1, 4)
    model = prune_channels(build_student(spec), SHAPE, 0.4).eval()  # residual, depthwise, low-rank pairs
    assert count_flops(model, SHAPE) < count_flops(build_student(spec), SHAPE)
    rebuilt = apply_shapes(build_student(spec), layer_shapes(model))
    rebuilt.load_state_dict(model.state_dict())  # strict: every tensor has the saved shape
    x = torch.randn(3, *SHAPE)
    assert torch.equal(rebuilt.eval()(x), model(x))
    other = parse_summary("stem8/s1 | ds k3 c16 s2 x1 | fc | relu", 1, 4)
    with pytest.raises(UserError, match="does not match spec.json"):
        apply_shapes(build_student(other), layer_shapes(model))


def test_flop_targets_fall_geometrically_to_the_budget():
    assert flop_targets(1000, 125, 3) == [500, 250, 125]
    assert flop_targets(1000, 400, 1) == [400]


def test_the_benchmark_runs_both_arms_once_and_resumes(study_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(os.path.join(os.path.dirname(__file__), "..", "benchmarks")))
    bench = importlib.import_module("prune_vs_search")
    trained = sorted((r for r in trial_records(open_named_study("ex", str(study_root), None)) if r.on_front_candidate),
                     key=lambda r: r.flops)
    assert trained[0].flops < trained[-1].flops, "the tiny study needs two students of different cost"
    args = ["--study-name", "ex", "--studies-dir", str(study_root), "--cache-dir", str(study_root / "cache"),
            "--prune-trial", str(trained[-1].number), "--to", str(trained[0].flops), "--epochs", "2", "--steps", "1",
            "--finetune-epochs", "1", "--seeds", "0", "--work-dir", str(tmp_path / "work"),
            "--csv", str(tmp_path / "rows.csv")]
    assert bench.main(args) == 0
    assert bench.main(args) == 0  # finished runs are read back, not run or recorded again
    with (tmp_path / "rows.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], int(r["trial"])) for r in rows] == [("prune", trained[-1].number), ("search", trained[0].number)]
    assert all(int(r["flops"]) <= trained[0].flops and r["total_epochs"] == "2" for r in rows)
