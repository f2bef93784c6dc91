"""int8 students from a real tiny study: the file onnxruntime loads and runs like the fp32 model,
the card's int8 entry, the quantization-aware path, quantizing a finished export in place, and the
ways the command refuses (a bad --int8-max-drop, a model the quantizer rejects)."""

import csv
import hashlib
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nas_kd.data import load_dataset
from nas_kd.errors import UserError
from nas_kd.export import main as export_main
from nas_kd.export.qat import add_fake_quant, fold_batch_norms, remove_fake_quant
from nas_kd.export.quantize import quantize_onnx
from nas_kd.model.builder import build_student
from nas_kd.model.spec import parse_summary

AGREEMENT = 0.9  # share of equal top-1 predictions int8 must reach against fp32 on a batch


def export(study_dir, cache_dir, out, *extra):
    return export_main(["--study-name", "ex", "--studies-dir", str(study_dir), "--cache-dir", str(cache_dir),
                        "--epochs", "3", "--threads", "1", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def finished(study_dir, cache_dir):
    """A finished export without int8, for the tests that quantize one in place (each on a copy)."""
    out = study_dir / "finished"
    assert export(study_dir, cache_dir, out) == 0
    return out


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _top1(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0].argmax(1)


def test_int8_file_classifies_like_fp32_and_the_card_describes_it(study_dir, cache_dir, capsys):
    out = study_dir / "int8"
    assert export(study_dir, cache_dir, out, "--int8", "--int8-max-drop", "100") == 0  # 100: no QAT here
    printed = capsys.readouterr().out
    card = json.loads((out / "model_card.json").read_text())
    q = card["int8"]

    data = load_dataset("tiny", None)  # the test images, normalised as the model's input expects
    norm = card["dataset"]["normalisation"]
    x = ((data.x_test - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, -1, 1, 1))
    same = _top1(out / "model.int8.onnx", x.numpy()) == _top1(out / "model.onnx", x.numpy())
    assert same.mean() >= AGREEMENT and q["agreement"] >= AGREEMENT

    assert q["method"] == "post-training static" and q["qat"] is None and q["within_max_drop"]
    for figure in ("val_accuracy", "test_accuracy"):
        assert set(q[figure]) == {"fp32", "int8"} and all(0 <= v <= 1 for v in q[figure].values())
    assert q["test_accuracy"]["fp32"] == pytest.approx(card["test_accuracy"], abs=1 / len(data.y_test))
    assert q["bytes"]["model.int8.onnx"] == (out / "model.int8.onnx").stat().st_size
    assert q["bytes"]["model.int8.onnx"] < q["bytes"]["model.onnx"] == (out / "model.onnx").stat().st_size
    assert q["latency_us_per_image"]["int8"] > 0 and q["latency_us_per_image"]["fp32"] > 0
    assert q["calibration"]["images"] == card["dataset"]["train_size"]  # fewer than 512: all of them
    assert f"int8 {q['test_accuracy']['int8']:.2%}" in printed
    markdown = (out / "model_card.md").read_text()
    assert "int8 test accuracy" in markdown and "model.int8.onnx" in markdown


def test_a_finished_export_is_quantized_in_place_without_retraining(finished, study_dir, cache_dir, tmp_path, capsys):
    folder = _copy(finished, tmp_path)
    weights, card_before = _sha(folder / "weights.safetensors"), json.loads((folder / "model_card.json").read_text())
    capsys.readouterr()
    assert export(study_dir, cache_dir, folder, "--int8", "--int8-max-drop", "100") == 0
    captured = capsys.readouterr()
    assert "not retraining" in captured.err and "KD training" not in captured.err
    assert "quantized the finished export of trial" in captured.out
    assert _sha(folder / "weights.safetensors") == weights and (folder / "model.int8.onnx").is_file()
    card = json.loads((folder / "model_card.json").read_text())
    assert card["train_seconds"] == card_before["train_seconds"] and "int8" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    assert export(study_dir, cache_dir, folder, "--int8", "--seed", "7", "--int8-max-drop", "100") == 0
    assert "KD training" in capsys.readouterr().err  # another seed is another student: trained as before
    assert json.loads((folder / "model_card.json").read_text())["training"]["seed"] == 7


def test_quantization_aware_training_runs_when_no_drop_is_allowed_and_resumes(finished, study_dir, cache_dir, tmp_path,
                                                                              monkeypatch, capsys):
    folder = _copy(finished, tmp_path)
    weights = _sha(folder / "weights.safetensors")
    capsys.readouterr()
    assert export(study_dir, cache_dir, folder, "--int8", "--int8-max-drop", "0") == 0
    captured = capsys.readouterr()
    assert "quantization-aware training: step" in captured.err and "KD training" not in captured.err
    q = json.loads((folder / "model_card.json").read_text())["int8"]
    assert q["qat"]["epochs"] >= 3 and q["qat"]["steps"] >= 100 and q["qat"]["checkpointed"] == "every epoch"
    assert "val_drop_points" in q["qat"] and "post_training_val_drop_points" in q
    assert q["qat"]["agreement_with_fake_quant"] >= AGREEMENT  # the fake quantization is onnxruntime's scheme
    assert q["method"].startswith("quantization-aware, ") or "tried" in q["method"]
    assert "quantization-aware training" in (folder / "model_card.md").read_text()
    assert ("WARNING" in captured.out) == (not q["within_max_drop"])
    assert _sha(folder / "weights.safetensors") == weights  # the fp32 student ships unchanged
    assert not (folder.parent / f".{folder.name}.resume").exists()  # its checkpoint goes with success

    import nas_kd.export.qat as qat_mod  # stopped in its sixth epoch, then resumed: the same int8 model

    real, stopped = qat_mod.train_model, _copy(finished, tmp_path / "stopped")

    def stopped_in_epoch_six(*args, **kwargs):
        inner = kwargs["on_step"]

        def on_step(step, total, loss):
            inner(step, total, loss)
            if step == total * 11 // 20:
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(qat_mod, "train_model", stopped_in_epoch_six)
    assert export(study_dir, cache_dir, stopped, "--int8", "--int8-max-drop", "0") == 130
    assert "is left as it was" in capsys.readouterr().err
    assert not (stopped / "model.int8.onnx").exists()  # the old export, as it was
    assert "int8" not in json.loads((stopped / "model_card.json").read_text())
    monkeypatch.setattr(qat_mod, "train_model", real)
    assert export(study_dir, cache_dir, stopped, "--int8", "--int8-max-drop", "0") == 0
    assert "resuming quantization-aware training" in capsys.readouterr().err
    resumed = json.loads((stopped / "model_card.json").read_text())["int8"]
    assert resumed["qat"]["val_accuracy"] == q["qat"]["val_accuracy"]
    assert resumed["test_accuracy"] == q["test_accuracy"] and resumed["agreement"] == q["agreement"]


@pytest.mark.parametrize("value", ["-0.5", "half", "nan"])
def test_a_bad_max_drop_is_one_error_line(study_dir, cache_dir, tmp_path, capsys, value):
    assert export(study_dir, cache_dir, tmp_path / "never", "--int8", "--int8-max-drop", value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --int8-max-drop must be a number") and value in err[0]
    assert not (tmp_path / "never").exists()


def _unquantizable(path):
    """A conv followed by an op from a domain onnxruntime does not know: its quantizer rejects the model."""
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Mystery", ["c"], ["logits"], domain="custom.ops")],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_the_quantizer_rejects_is_one_error_line_and_the_export_stays(finished, study_dir, cache_dir,
                                                                               tmp_path, capsys):
    with pytest.raises(UserError, match="onnxruntime cannot quantize bad.onnx: .*shape inference"):
        quantize_onnx(_unquantizable(tmp_path / "bad.onnx"), tmp_path / "bad.int8.onnx", torch.zeros(8, 1, 12, 12))
    assert not (tmp_path / "bad.int8.onnx").exists() and not list(Path.cwd().glob("sym_shape_infer*"))

    folder = _copy(finished, tmp_path / "copy")  # an export whose ONNX file the quantizer rejects
    _unquantizable(folder / "model.onnx")
    before = {p.name: _sha(p) for p in folder.iterdir()}
    capsys.readouterr()
    assert export(study_dir, cache_dir, folder, "--int8") == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert [line for line in err if "error" in line.lower()] == [err[-1]] and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: --int8: onnxruntime cannot quantize model.onnx: ")
    assert {p.name: _sha(p) for p in folder.iterdir()} == before  # the old export, untouched
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_batch_norm_folding_keeps_the_logits_and_fake_quant_comes_off_cleanly():
    torch.manual_seed(0)
    spec = parse_summary("stem8/s1 | ds k3 c16 s2 x2 | ir2 k3 c16 s1 x1 pw.5 | head32 | fc.5 | relu", 1, 4)
    model = build_student(spec).eval()
    for m in model.modules():  # batch norms with real statistics, so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(8, 1, 12, 12)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batch_norms(model)
        assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert torch.allclose(folded(x), expected, atol=1e-5)
        handles = add_fake_quant(folded)
        assert not torch.allclose(folded(x), expected, atol=1e-5)  # fake quantization changes the logits
        remove_fake_quant(folded, handles)
        assert torch.allclose(folded(x), expected, atol=1e-5)


def test_the_benchmark_quantizes_finished_exports_without_retraining(finished, study_dir, cache_dir, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    bench = importlib.import_module("int8")
    folder = _copy(finished, tmp_path)
    weights = _sha(folder / "weights.safetensors")
    args = ["--folders", str(folder), "--studies-dir", str(study_dir), "--cache-dir", str(cache_dir),
            "--int8-max-drop", "100", "--int8-activations", "--out", str(tmp_path / "rows.csv")]
    assert bench.main(args) == 0
    assert "KD training" not in capsys.readouterr().err and _sha(folder / "weights.safetensors") == weights
    with (tmp_path / "rows.csv").open() as f:
        [row] = list(csv.DictReader(f))
    card = json.loads((folder / "model_card.json").read_text())
    assert row["folder"] == str(folder) and int(row["flops"]) == card["flops"]
    assert float(row["int8_test_accuracy"]) == round(card["int8"]["test_accuracy"]["int8"], 4)
    assert int(row["int8_bytes"]) < int(row["fp32_bytes"]) and float(row["int8_activations_latency_us"]) > 0
    assert row["path"] == "post-training static"
    assert bench.main([*args[:2], "--out", str(tmp_path / "rows.csv")]) == 0  # the card's entry, read back
    with (tmp_path / "rows.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
