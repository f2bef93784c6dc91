"""fp32 vs int8 for finished exports, each quantized in place as ``nas_kd.export --int8`` does it.

A folder is never retrained (one that is not a finished export of its study's trial is refused);
one whose card already has an int8 entry is read, unless ``--requantize``. One row per folder: test
accuracy, drop, onnxruntime latency (batch 1, one thread) and file size, fp32 and int8, and the path
taken. Appends to benchmarks/int8.csv.

    python benchmarks/int8.py --folders studies/fashion-mnist-5MFLOPs/export-trial2 studies/.../export-trial7
    python benchmarks/int8.py --folders A B --requantize --int8-activations   # also time int8 activations

``--int8-activations`` adds the latency of the same student quantized with int8 instead of uint8
activations (everything else equal): the evidence for the export's choice of uint8 (quantize.SCHEME).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from csv_rows import append_rows

from nas_kd.cli.runner import positive_int, quiet_libraries, set_threads
from nas_kd.errors import UserError
from nas_kd.export.cli import max_drop
from nas_kd.export.pick import pick_trial
from nas_kd.export.quantize import DEFAULT_MAX_DROP, INT8_FILE, calibration_images, quantize_onnx
from nas_kd.export.retrain import DEFAULT_KD_TARGETS, Recipe, read_recipe
from nas_kd.export.trial import finished_export, quantize_in_place
from nas_kd.model.latency import time_runs
from nas_kd.progress import Progress
from nas_kd.study.records import trial_records
from nas_kd.study.storage import open_named_study

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folders", nargs="+", required=True, help="finished export folders")
    p.add_argument("--studies-dir", help="where their studies are (default: each folder's STUDIES_DIR/NAME/..)")
    p.add_argument("--storage", default=os.environ.get("NAS_KD_STORAGE"),
                   help="Optuna storage URL of their studies (default: $NAS_KD_STORAGE, else the SQLite file)")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--int8-max-drop", type=max_drop, default=DEFAULT_MAX_DROP)
    p.add_argument("--requantize", action="store_true", help="quantize again even when the card has an int8 entry")
    p.add_argument("--int8-activations", action="store_true", help="also time int8 (not uint8) activations")
    p.add_argument("--threads", type=positive_int("--threads"), default=1, help="PyTorch threads (for QAT)")
    p.add_argument("--out", default=str(HERE / "int8.csv"))
    a = p.parse_args(argv)
    quiet_libraries()
    set_threads(a.threads)
    for folder in map(Path, a.folders):
        try:
            row = _row(folder, a)
        except UserError as err:
            print(f"error: {folder}: {err}", file=sys.stderr)
            return 2
        append_rows(Path(a.out), [row])
        print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return 0


def _row(folder: Path, a: argparse.Namespace) -> dict:
    card = json.loads((folder / "model_card.json").read_text())
    recipe = None
    if "int8" not in card or a.requantize or a.int8_activations:
        recipe = _recipe(folder, card, a)
    if "int8" not in card or a.requantize:
        card = quantize_in_place(folder, recipe, a.int8_max_drop, Progress()).card
    q = card["int8"]
    lat, size, test = q["latency_us_per_image"], q["bytes"], q["test_accuracy"]
    row = {
        "date": date.today().isoformat(), "folder": str(folder), "architecture": card["architecture"],
        "flops": card["flops"], "params": card["params"], "seed": card["training"]["seed"],
        "fp32_test_accuracy": round(test["fp32"], 4), "int8_test_accuracy": round(test["int8"], 4),
        "drop_points": q["test_drop_points"], "val_drop_points": q["val_drop_points"],
        "fp32_latency_us": lat["fp32"], "int8_latency_us": lat["int8"], "latency_ratio": lat["ratio"],
        "fp32_bytes": size["model.onnx"], "int8_bytes": size[INT8_FILE],
        "size_ratio": round(size[INT8_FILE] / size["model.onnx"], 3),
        "path": q["method"], "agreement": round(q["agreement"], 4), "calibration_images": q["calibration"]["images"],
    }
    if a.int8_activations:
        row["int8_activations_latency_us"] = _int8_activations_latency(folder, recipe)
    return row


def _recipe(folder: Path, card: dict, a: argparse.Namespace) -> Recipe:
    """The recipe the folder's card records, read from its study; refused unless the folder is a
    finished export of it (quantizing it in place then retrains nothing)."""
    studies_dir = a.studies_dir or str(folder.parent.parent)
    study = open_named_study(card["study"], studies_dir, a.storage)
    record = pick_trial(trial_records(study), trial=card["trial"])
    t = card["training"]
    recipe = read_recipe(study, record, epochs=t["epochs"], augment=t["augment"],
                         kd_targets_mode=card.get("kd_targets") or DEFAULT_KD_TARGETS, seed=t["seed"],
                         data_dir=a.data_dir, cache_dir=a.cache_dir, progress=Progress())
    if not finished_export(folder, study.study_name, record, recipe):
        raise UserError("not a finished export of its study's trial with the settings its card records")
    return recipe


def _int8_activations_latency(folder: Path, recipe: Recipe) -> float:
    """The student quantized as the export does, but with int8 activations: its latency by the same rule."""
    from nas_kd.export.deploy import onnx_session

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "s8s8.onnx"
        quantize_onnx(folder / "model.onnx", target, calibration_images(recipe.split, recipe.settings.seed),
                      activations="int8")
        session = onnx_session(target)
        one = recipe.split.x_val[:1].numpy()
        return round(time_runs(lambda x: session.run(None, {"images": x}), one).median_us, 1)


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
