"""int8 students: onnxruntime static quantization of an export's ``model.onnx`` into
``model.int8.onnx``, calibrated on training images, then measured in onnxruntime beside the fp32
file (accuracy, agreement, latency, size). When post-training quantization loses more validation
accuracy than allowed, the student is fine-tuned quantization-aware (``qat``) and quantized again.
Nothing is shipped that onnxruntime has not loaded and scored."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas_kd.data import Split
from nas_kd.errors import UserError
from nas_kd.export.deploy import onnx_session
from nas_kd.export.qat import quantization_aware
from nas_kd.export.retrain import Recipe
from nas_kd.model.latency import LATENCY_METHOD, export_onnx, time_runs
from nas_kd.progress import Progress

INT8_FILE = "model.int8.onnx"
DEFAULT_MAX_DROP = 0.5  # points of validation accuracy int8 may lose before QAT is tried
CALIBRATION_IMAGES = 512  # training images (never validation or test) the activation ranges are read from
CALIBRATION_BATCH = 64
SCORE_BATCH = 256
POST_TRAINING = "post-training static"
# Activations are stored as uint8: with an asymmetric per-tensor range this is the same grid as int8
# (the zero point moves by 128), but onnxruntime 1.32's CPU kernels fuse every convolution (depthwise
# too) and the residual adds only for uint8 activations; with int8 ones they stayed float between
# Quantize/Dequantize nodes and ran 3-5x slower than fp32 on this machine (docs/export.md, int8).
SCHEME = ("onnxruntime quantize_static, QDQ format; weights int8, symmetric, per output channel; "
          "activations uint8, asymmetric, per tensor; MinMax calibration")


def calibration_images(split: Split, seed: int, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """``n`` training images (all of them if fewer), drawn with ``seed``, normalised like every input
    the student sees: the split's tensors are."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(split.x_train), generator=g)[:n]
    return split.x_train[index].contiguous()


def quantize_onnx(fp32: Path, target: Path, images: torch.Tensor, *, activations: str = "uint8",
                  calibration: dict | None = None) -> None:
    """``fp32`` quantized statically into ``target`` (``SCHEME``), its activation ranges read from
    ``images``; ``activations="int8"`` stores them signed instead (benchmarks/int8.py compares), and
    ``calibration`` adds ``quantize_static`` keywords such as ``calibrate_method`` or
    ``nodes_to_exclude`` (benchmarks/int8_calibration.py compares). Raises UserError naming the
    failure when onnxruntime's quantizer rejects the model."""
    fp32, target = Path(fp32).resolve(), Path(target).resolve()  # it runs in a scratch folder
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(images.split(CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch.numpy()}

    quiet = logging.getLogger("onnxruntime")
    level, quiet.level = quiet.level, logging.CRITICAL  # its tracebacks would bury the one error line
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch, _working_dir(scratch):
            prepared = Path(scratch) / "prepared.onnx"  # shape inference and graph clean-up, as it advises
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activations],
                            weight_type=QuantType.QInt8, **(calibration or {}))
        shorten_names(target)
    except Exception as err:  # onnxruntime raises bare Exception, RuntimeError or its own types
        target.unlink(missing_ok=True)
        raise UserError(f"--int8: onnxruntime cannot quantize {fp32.name}: {_first_line(err)}") from None
    finally:
        quiet.level = level


def shorten_names(path: Path) -> None:
    """Rename the inner tensors of the ONNX file ``path`` t0, t1, ... and drop its node names. The
    quantizer repeats each layer's path in every Quantize/Dequantize node and tensor it adds, which
    on a small student weighs more than its int8 weights (12k parameters: 55 kB, 28 kB without);
    the graph's input and output keep their names."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # subgraphs may name outer tensors: left as the quantizer wrote them
    keep = {v.name for v in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"t{len(names)}")

    for tensor in [*graph.initializer, *graph.value_info]:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        for field in (node.input, node.output):
            renamed = [short(n) for n in field]
            del field[:]
            field.extend(renamed)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _working_dir(folder: str) -> Iterator[None]:
    """Run in ``folder``: onnxruntime's shape inference drops a debug file into the working directory
    when it fails, which would be left in the user's."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no message'}"


@dataclass(frozen=True)
class Scored:
    """One ONNX file as onnxruntime runs it: validation accuracy and top-1 on the check batch."""

    path: Path
    val_accuracy: float
    check_top1: np.ndarray

    def test_accuracy(self, split: Split) -> float:
        return _accuracy(_session(self.path), split.x_test, split.y_test)


def score(path: Path, split: Split, check: torch.Tensor) -> Scored:
    """Load ``path`` in onnxruntime and score it on validation; raises UserError if it cannot run."""
    session = _session(path)
    return Scored(path, _accuracy(session, split.x_val, split.y_val), _top1(session, check))


def _session(path: Path):  # noqa: ANN202 - an onnxruntime.InferenceSession
    try:
        return onnx_session(path)
    except Exception as err:
        raise UserError(f"--int8: onnxruntime cannot load {path.name}: {_first_line(err)}") from None


def _top1(session, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001 - an InferenceSession
    return np.concatenate([session.run(None, {"images": b.numpy()})[0].argmax(1) for b in x.split(SCORE_BATCH)])


def _accuracy(session, x: torch.Tensor, y: torch.Tensor) -> float:  # noqa: ANN001 - an InferenceSession
    return float((_top1(session, x) == y.numpy()).mean())


def points(fp32: float, int8: float) -> float:
    """What int8 loses against fp32, in points of accuracy (negative: it gains)."""
    return round(100 * (fp32 - int8), 2)


def needs_qat(drop: float, max_drop: float) -> bool:
    """Fine-tune quantization-aware when int8 loses more than allowed; ``max_drop`` 0 always tries
    it (a tie on validation is no proof that nothing was lost)."""
    return drop > max_drop or max_drop == 0


def add_int8(folder: Path, recipe: Recipe, student: nn.Module, *, max_drop: float, check: torch.Tensor,
             out: Path, progress: Progress) -> dict:
    """Write ``folder/model.int8.onnx`` from ``folder/model.onnx`` (the fp32 export of ``student``),
    fine-tuned quantization-aware first if post-training quantization loses more than ``max_drop``
    points of validation accuracy (checkpointed beside ``out``), and return the card's ``int8`` entry."""
    split, target = recipe.split, folder / INT8_FILE
    images = calibration_images(split, recipe.settings.seed)
    quantize_onnx(folder / "model.onnx", target, images)
    fp32 = score(folder / "model.onnx", split, check)
    shipped = ptq = score(target, split, check)
    progress.log(f"export: int8 ({POST_TRAINING}) validation accuracy {ptq.val_accuracy:.2%} "
                 f"vs fp32 {fp32.val_accuracy:.2%}")
    method, qat = POST_TRAINING, None
    if needs_qat(points(fp32.val_accuracy, ptq.val_accuracy), max_drop):
        tuned = quantization_aware(student, recipe, check, out, progress)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            export_onnx(tuned.model, check[:1], Path(scratch) / "qat.onnx")
            quantize_onnx(Path(scratch) / "qat.onnx", Path(scratch) / INT8_FILE, images)
            tried = score(Path(scratch) / INT8_FILE, split, check)
            qat = {**tuned.record, "val_accuracy": tried.val_accuracy,
                   "val_drop_points": points(fp32.val_accuracy, tried.val_accuracy),
                   "agreement_with_fake_quant": float((tried.check_top1 == tuned.check_top1).mean())}
            progress.log(f"export: int8 after quantization-aware training: validation accuracy "
                         f"{tried.val_accuracy:.2%}")
            if tried.val_accuracy >= ptq.val_accuracy:
                os.replace(tried.path, target)
                shipped = dataclasses.replace(tried, path=target)
                method = f"quantization-aware, {qat['epochs']:g} epochs"
            else:  # post-training stays: the fine-tuned model quantized worse
                method = f"{POST_TRAINING} (quantization-aware training tried: worse on validation)"
    return int8_entry(fp32, shipped, method, qat, ptq_drop=points(fp32.val_accuracy, ptq.val_accuracy),
                      split=split, max_drop=max_drop, calibration={
                          "images": len(images), "seed": recipe.settings.seed,
                          "source": "training split (validation carved out), drawn with the export's seed"})


def int8_entry(fp32: Scored, int8: Scored, method: str, qat: dict | None, *, ptq_drop: float, split: Split,
               max_drop: float, calibration: dict) -> dict:
    """The card's ``int8`` entry: fp32 and int8 side by side, both measured in onnxruntime."""
    test = {"fp32": fp32.test_accuracy(split), "int8": int8.test_accuracy(split)}
    drop = points(fp32.val_accuracy, int8.val_accuracy)
    return {
        "path": INT8_FILE, "method": method, "scheme": SCHEME, "calibration": calibration,
        "val_accuracy": {"fp32": fp32.val_accuracy, "int8": int8.val_accuracy}, "test_accuracy": test,
        "val_drop_points": drop, "test_drop_points": points(test["fp32"], test["int8"]),
        "post_training_val_drop_points": ptq_drop, "qat": qat,
        "max_drop_points": max_drop, "within_max_drop": drop <= max_drop,
        "agreement": float((int8.check_top1 == fp32.check_top1).mean()), "check_batch": len(fp32.check_top1),
        "latency_us_per_image": _latencies(fp32.path, int8.path, split.x_val[:1]),
        "bytes": {"model.onnx": fp32.path.stat().st_size, INT8_FILE: int8.path.stat().st_size},
    }


def _latencies(fp32: Path, int8: Path, one: torch.Tensor) -> dict:
    """Both files timed one after the other by the same rule, on one image and one thread."""
    times = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = _session(path)
        times[name] = round(time_runs(lambda x, s=session: s.run(None, {"images": x}), one.numpy()).median_us, 1)
    return {**times, "ratio": round(times["int8"] / times["fp32"], 3), "runtime": "onnxruntime",
            "threads": 1, "batch": 1, "statistic": LATENCY_METHOD}
