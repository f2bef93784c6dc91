"""How much an export's int8 accuracy depends on its calibration: the fp32 ``model.onnx`` of finished
exports quantized as ``nas_kd.export --int8`` does it (QDQ, per-channel int8 weights, uint8
activations), varying only the calibration (which and how many training images, MinMax or
percentile ranges), each scored on validation in onnxruntime. Trains nothing; appends to
benchmarks/int8_calibration.csv.

    python benchmarks/int8_calibration.py --folders /path/export-a /path/export-b
    python benchmarks/int8_calibration.py --folders /path/export-a --leave-one-out   # which layer loses it

``--leave-one-out`` quantizes with the export's calibration (MinMax, 512 images, the export's seed) but
keeps one node in float at a time (each Conv and Gemm node in turn; the hard-swish nodes that the
pre-processing adds have no names to exclude): the nodes whose exclusion recovers most accuracy are
where int8 loses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from csv_rows import append_rows

from nas_kd.cli.runner import quiet_libraries, set_threads
from nas_kd.data import load_dataset, split_dataset
from nas_kd.errors import UserError
from nas_kd.export.quantize import CALIBRATION_IMAGES, calibration_images, quantize_onnx, score

HERE = Path(__file__).parent
# name: (calibration seed, images, method, percentile)
SETTINGS = {
    "minmax-512-seed0": (0, 512, "MinMax", None),
    "minmax-512-seed1": (1, 512, "MinMax", None),
    "minmax-2048-seed0": (0, 2048, "MinMax", None),
    "percentile99.99-512-seed0": (0, 512, "Percentile", 99.99),
    "percentile99.999-512-seed0": (0, 512, "Percentile", 99.999),
    "entropy-512-seed0": (0, 512, "Entropy", None),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folders", nargs="+", required=True, help="finished export folders (model.onnx, model_card.json)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--leave-one-out", action="store_true", help="keep one node in float at a time instead")
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(HERE / "int8_calibration.csv"))
    a = p.parse_args(argv)
    quiet_libraries()
    set_threads(1)
    for folder in map(Path, a.folders):
        try:
            rows = _rows(folder, a)
        except (UserError, OSError, KeyError) as err:
            print(f"error: {folder}: not a finished export folder or unreadable ({err})", file=sys.stderr)
            return 2
        append_rows(Path(a.out), rows)
    return 0


def _rows(folder: Path, a: argparse.Namespace) -> list[dict]:
    card = json.loads((folder / "model_card.json").read_text())
    ds, seed = card["dataset"], card["training"]["seed"]
    split = split_dataset(load_dataset(ds["dataset"], a.data_dir), val_size=ds["val_size"], seed=ds["split_seed"])
    fp32 = _val_accuracy(folder / "model.onnx", split)
    fp32_file = folder / "model.onnx"
    runs = ({f"float {node}": (seed, CALIBRATION_IMAGES, "MinMax", None, (node,)) for node in _nodes(fp32_file)}
            if a.leave_one_out else {name: SETTINGS[name] for name in a.settings})
    rows = []
    for name, setting in runs.items():
        acc = _quantized_accuracy(folder / "model.onnx", split, *setting)
        rows.append({"date": date.today().isoformat(), "folder": str(folder), "architecture": card["architecture"],
                     "seed": seed, "setting": name, "fp32_val_accuracy": round(fp32, 4),
                     "int8_val_accuracy": round(acc, 4), "val_drop_points": round(100 * (fp32 - acc), 2)})
        print(", ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    return rows


def _val_accuracy(path: Path, split) -> float:  # noqa: ANN001 - a Split
    return score(path, split, split.x_val[:1]).val_accuracy


def _nodes(path: Path) -> list[str]:
    """The names of the nodes that hold weights, in graph order, as the quantizer sees them."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        quant_pre_process(str(path), f"{scratch}/prepared.onnx")
        graph = onnx.load(f"{scratch}/prepared.onnx").graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")]


def _quantized_accuracy(fp32: Path, split, seed: int, n: int, method: str, percentile: float | None,  # noqa: ANN001
                        keep_float: tuple[str, ...] = ()) -> float:
    """``fp32`` quantized as the export does but for the calibration given, scored on validation."""
    from onnxruntime.quantization import CalibrationMethod

    calibration = {"calibrate_method": getattr(CalibrationMethod, method), "nodes_to_exclude": list(keep_float),
                   "extra_options": {"CalibPercentile": percentile} if percentile else {}}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "int8.onnx"
        quantize_onnx(fp32, target, calibration_images(split, seed, n), calibration=calibration)
        return _val_accuracy(target, split)


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
