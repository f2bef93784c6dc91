"""``python -m nas_kd.export --study-name NAME``: retrain a chosen student longer with KD and ship it.

The export folder holds the spec (JSON), weights (safetensors), TorchScript, ONNX (checked against
onnxruntime), and a model card (Markdown + JSON) with cost, accuracy and latency measured here.
It is written to a temporary folder and moved into place, so a failed export leaves no folder behind;
its trainings are checkpointed every epoch, and the same command resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

from nas_kd import interrupts
from nas_kd.data.dataset import Split, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings, needs_features
from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.cost import FLOP_CONVENTION, count_cost, count_thop
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.study.pareto import pareto_front
from nas_kd.study.records import TrialRecord, trial_records
from nas_kd.study.storage import open_named_study
from nas_kd.teacher.load import KD_TARGETS, kd_targets, load_teacher
from nas_kd.train.loop import AUGMENTATIONS, TrainSettings, accuracy, train_model

# A 20-epoch retraining of Fashion-MNIST overfits without augmentation; the teacher's targets follow
# the augmented images as measured in benchmarks/RESULTS.md (KD targets). Other data gets none by
# default: flips and 2-pixel shifts are not label-preserving everywhere (digits, 8×8 images).
DEFAULT_AUGMENT = {"fashion-mnist": "crop-flip"}
DEFAULT_KD_TARGETS = "clean"
# 20 epochs, and at least 1000 SGD steps: on small data 20 epochs are fewer steps than a search trial
# took (digits: 160 vs 300). Chosen on digits' validation split, 32.9k-FLOP student, KD, 2 seeds:
# 160 steps 96.3%, 900 steps 98.5%, 1800 steps 98.5%. Fashion-MNIST gets 100 epochs (42,900 steps):
# a student there keeps gaining from KD long after 20 (mobilenet-4m-wide, val: 20 epochs 93.50%,
# 60 epochs 93.98%, 100 epochs 94.42%, seed 0; benchmarks/RESULTS.md), and an export is run once.
EXPORT_EPOCHS = 20
DATASET_EXPORT_EPOCHS = {"fashion-mnist": 100}
EXPORT_MIN_STEPS = 1000

ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    card: dict


def pick_trial(records: list[TrialRecord], *, trial: int | None = None, pick: str = "best") -> TrialRecord:
    """The trial to export: by number, or ``best`` (highest validation accuracy), ``knee`` (the
    front point farthest from the line joining its ends), or ``max-acc-under:BUDGET``."""
    done = [r for r in records if r.status == "trained" and r.feasible and r.val_accuracy is not None]
    if trial is not None:
        match = [r for r in records if r.number == trial]
        if not match:
            raise UserError(f"no trial {trial} in this study (it has trials 0-{len(records) - 1})")
        r = match[0]
        if r not in done:
            why = r.fail_reason or ("over budget, never trained" if r.status == "infeasible" else r.status)
            raise UserError(f"trial {trial} cannot be exported: it is {r.status} ({why}); pick a trained trial")
        return r
    if not records:
        raise UserError("the study has no trials yet: run nas_kd.search.cli first")
    if not done:
        raise UserError("no trial of this study is trained within budget: nothing to export")
    if pick == "best":
        return max(done, key=lambda r: (r.val_accuracy, -r.flops))
    if pick.startswith("max-acc-under"):
        limit = parse_quantity(pick.split(":", 1)[1] if ":" in pick else "", what="max-acc-under budget")
        under = [r for r in done if r.flops <= limit]
        if not under:
            raise UserError(f"no trained trial has at most {format_quantity(limit)} FLOPs")
        return max(under, key=lambda r: (r.val_accuracy, -r.flops))
    if pick == "knee":
        front = [done[i] for i in pareto_front([(r.val_accuracy, r.flops) for r in done])]
        if len(front) <= 2:
            return front[-1]
        # normalised distance from the chord between the cheapest and the most accurate point
        a0, c0 = front[0].val_accuracy, np.log(front[0].flops)
        a1, c1 = front[-1].val_accuracy, np.log(front[-1].flops)
        def dist(r: TrialRecord) -> float:
            x, y = (np.log(r.flops) - c0) / max(c1 - c0, 1e-12), (r.val_accuracy - a0) / max(a1 - a0, 1e-12)
            return y - x
        return max(front, key=dist)
    raise UserError(f"unknown --pick {pick!r}: use best, knee or max-acc-under:BUDGET")


def _split_from_study(study: optuna.Study, data_dir: str | None) -> Split:
    identity = study.user_attrs.get("nas_kd.identity")
    settings = study.user_attrs.get("nas_kd.settings", {})
    if identity is None:
        raise UserError(f"study {study.study_name!r} was not written by nas_kd.search.cli")
    cfg = settings.get("config", {})
    data = load_dataset(identity["dataset"], data_dir or cfg.get("data_dir"))
    split = split_dataset(data, val_size=identity["split"]["val_size"], seed=identity["split"]["split_seed"])
    if split.description["fingerprint"] != identity["split"].get("fingerprint"):
        raise UserError(f"the {identity['dataset']} files differ from the ones the study was run on")
    return split


def _latency_us(fn, x: torch.Tensor, repeats: int = 200) -> float:  # noqa: ANN001
    for _ in range(20):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _onnx_session(path: Path):  # noqa: ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def write_deployables(model: nn.Module, spec: ArchSpec, batch: torch.Tensor, folder: Path) -> dict:
    """spec.json, weights.safetensors, model.ts, model.onnx; checks both runtimes against PyTorch."""
    from safetensors.torch import save_file

    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    with torch.inference_mode():
        expected = model(batch).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, batch[:1])
        traced.save(str(folder / "model.ts"))
        torch.onnx.export(
            model, (batch[:1],), str(folder / "model.onnx"), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    ts_diff = float(np.abs(torch.jit.load(str(folder / "model.ts"))(batch).detach().numpy() - expected).max())
    session = _onnx_session(folder / "model.onnx")
    onnx_out = session.run(None, {"images": batch.numpy()})[0]
    onnx_diff = float(np.abs(onnx_out - expected).max())
    if not onnx_diff <= ONNX_TOLERANCE or not ts_diff <= ONNX_TOLERANCE:
        raise RuntimeError(
            f"exported model disagrees with PyTorch: ONNX max |diff| {onnx_diff:.2e}, TorchScript {ts_diff:.2e} "
            f"(tolerance {ONNX_TOLERANCE:g})"
        )
    one = batch[:1]
    torch.set_num_threads(1)
    with torch.inference_mode():
        torch_us = _latency_us(model, one)
    onnx_us = _latency_us(lambda x: session.run(None, {"images": x}), one.numpy())
    torch.set_num_threads(os.cpu_count() or 1)
    return {"onnx_max_abs_diff": onnx_diff, "torchscript_max_abs_diff": ts_diff, "check_batch": len(batch),
            "latency_us_per_image": {"pytorch": round(torch_us, 1), "onnxruntime": round(onnx_us, 1),
                                     "threads": 1, "batch": 1, "statistic": "median of 200 runs"}}


def load_student(folder: str | Path) -> nn.Module:
    """The exported student of ``folder`` as an ``nn.Module`` in eval mode, weights loaded."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        spec = ArchSpec.from_json((folder / "spec.json").read_text())
        state = load_file(folder / "weights.safetensors")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a student from {folder}: {err}") from None
    model = build_student(spec)
    model.load_state_dict(state)
    return model.eval()


def _train_student(spec: ArchSpec, split: Split, settings: TrainSettings, kd: KDSettings,
                   targets: dict, progress: Progress, label: str, checkpoint: Path | None) -> tuple[nn.Module, float]:
    torch.manual_seed(settings.seed)
    model = build_student(spec).to(memory_format=torch.channels_last)
    if checkpoint is not None and checkpoint.exists():
        progress.log(f"export: resuming {label} from {checkpoint}")
    start = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.status(f"{label}: step {step}/{total} ({step / total:.0%}) loss {loss:.3f} "
                        f"elapsed {format_seconds(time.perf_counter() - start)}")

    result = train_model(model, split.x_train, split.y_train, settings, kd=kd, on_step=on_step,
                         checkpoint=checkpoint, **targets)
    return model, result.seconds


def resume_folder(out: Path) -> Path:
    """Where an export's trainings keep their per-epoch checkpoints until the export folder is written."""
    return out.parent / f".{out.name}.resume"


def _checkpoint_file(out: Path, label: str, **run: object) -> Path:
    """A checkpoint named by everything that shapes the training, so a changed command starts afresh."""
    key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return resume_folder(out) / f"{label}-{key}.pt"


def export_epochs(n_images: int, batch_size: int, dataset: str = "") -> float:
    """The default retraining length: the dataset's entry in ``DATASET_EXPORT_EPOCHS`` or
    ``EXPORT_EPOCHS``, and more epochs when those give fewer than ``EXPORT_MIN_STEPS`` steps."""
    steps_per_epoch = max(1, n_images // batch_size)
    epochs = DATASET_EXPORT_EPOCHS.get(dataset, EXPORT_EPOCHS)
    return float(max(epochs, math.ceil(EXPORT_MIN_STEPS / steps_per_epoch)))


def export_trial(study: optuna.Study, record: TrialRecord, out: Path, *, epochs: float | None, ablation: bool,
                 augment: str | None = None, kd_targets_mode: str = DEFAULT_KD_TARGETS, seed: int | None = None,
                 data_dir: str | None = None, cache_dir: str | None = None,
                 progress: Progress | None = None) -> ExportResult:
    """Retrain ``record``'s architecture with KD on the whole training split (augmented: a long run
    needs it, a 2-epoch search trial does not), evaluate once on test, and write the export folder
    ``out`` (atomically)."""
    progress = progress or Progress()
    split = _split_from_study(study, data_dir)
    identity = study.user_attrs["nas_kd.identity"]
    spec = ArchSpec.from_dict(record.spec)
    kd = KDSettings(**(record.kd or identity["kd"]))  # under --kd search, the trial's own recipe
    base = TrainSettings(**identity["train"])
    augment = augment or DEFAULT_AUGMENT.get(identity["dataset"], "none")
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kd_targets_mode not in KD_TARGETS:
        raise UserError(f"unknown KD targets {kd_targets_mode!r}: choose one of {', '.join(KD_TARGETS)}")
    if epochs is None:
        epochs = export_epochs(len(split.y_train), base.batch_size, identity["dataset"])
    settings = TrainSettings(**{**asdict(base), "epochs": epochs, "augment": augment,
                                "seed": base.seed if seed is None else seed})
    targets, teacher_info = {}, None
    if kd.uses_teacher:
        recorded = identity.get("teacher", {})
        cfg = study.user_attrs.get("nas_kd.settings", {}).get("config", {})
        weights = cfg.get("teacher_weights")
        teacher = load_teacher(split, tuple(cfg.get("teachers") or ()), tuple(weights) if weights else None,
                               seed=cfg.get("teacher_seed", 0), cache_dir=cache_dir, progress=progress, train=False,
                               weight_files=tuple(cfg.get("teacher_files") or ()),
                               teacher_input=cfg.get("teacher_input", "normalised"))
        if recorded.get("sha256") and recorded["sha256"] != teacher.info["sha256"]:
            raise UserError("the cached teacher differs from the one this study distilled from "
                            f"({recorded['sha256'][:12]}… vs {teacher.info['sha256'][:12]}…)")
        keep = ("key", "sha256", "val_accuracy", "test_accuracy", "flops", "params")
        teacher_info = {k: teacher.info[k] for k in keep}
        targets = kd_targets(teacher, split, kd_targets_mode, augment, cache_dir=cache_dir)
        if needs_features(kd.loss):  # feature losses run the teacher on every batch
            targets["teacher"] = teacher.model.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        progress.log(f"export: trial {record.number} ({spec.summary()}), {kd.describe()}, {epochs:g} epochs "
                     f"on {len(split.y_train)} images")
        run = {"spec": spec.to_dict(), "settings": asdict(settings), "dataset": split.description,
               "teacher": teacher_info and teacher_info["sha256"], "kd_targets": kd_targets_mode}
        # feature losses train adapters that are not checkpointed (train_model refuses them)
        kd_ckpt = None if needs_features(kd.loss) else _checkpoint_file(out, "kd", kd=asdict(kd), **run)
        model, seconds = _train_student(spec, split, settings, kd, targets, progress, "KD training", kd_ckpt)
        cost = count_cost(model, split.input_shape)
        card = {
            "trial": record.number, "study": study.study_name, "architecture": spec.summary(), "spec": spec.to_dict(),
            "dataset": split.description,
            "flops": cost.flops, "flops_thop": count_thop(model, split.input_shape), "params": cost.params,
            "flop_convention": FLOP_CONVENTION + "; thop's count (beside it) also counts batch norm",
            "search_val_accuracy": record.val_accuracy,
            "val_accuracy": accuracy(model, split.x_val, split.y_val),
            "test_accuracy": accuracy(model, split.x_test, split.y_test),
            "teacher": teacher_info, "kd": asdict(kd), "kd_loss": kd.describe(), "training": asdict(settings),
            "kd_targets": kd_targets_mode if kd.uses_teacher else None,
            "train_seconds": round(seconds, 3),
        }
        progress.log(f"export: KD student test accuracy {card['test_accuracy']:.2%} (val {card['val_accuracy']:.2%}) "
                     f"after {format_seconds(seconds)}")
        if ablation:
            labels_only = KDSettings(loss=kd.loss, temperature=kd.temperature, alpha=0.0)
            plain, plain_s = _train_student(spec, split, settings, labels_only, {}, progress, "label-only training",
                                            _checkpoint_file(out, "labels", **run))
            card["ablation"] = {
                "labels_only_test_accuracy": accuracy(plain, split.x_test, split.y_test),
                "labels_only_val_accuracy": accuracy(plain, split.x_val, split.y_val),
                "labels_only_train_seconds": round(plain_s, 3),
            }
            card["ablation"]["kd_gain_points"] = round(
                100 * (card["test_accuracy"] - card["ablation"]["labels_only_test_accuracy"]), 2)
            progress.log(f"export: labels only {card['ablation']['labels_only_test_accuracy']:.2%}: "
                         f"KD gains {card['ablation']['kd_gain_points']:+.2f} points")
        card.update(write_deployables(model, spec, split.x_val[:256], tmp))
        card["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        (tmp / "model_card.md").write_text(model_card_markdown(card))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        shutil.rmtree(resume_folder(out), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the checkpoints stay: the same command resumes from them
        raise
    return ExportResult(out, card)


def model_card_markdown(card: dict) -> str:
    d, lat = card["dataset"], card["latency_us_per_image"]
    teacher = card["teacher"]
    lines = [
        f"# Student: {card['architecture']}",
        "",
        f"From study `{card['study']}`, trial {card['trial']}; retrained with `{card['kd_loss']}` for "
        f"{card['training']['epochs']:g} epochs, augmentation {card['training']['augment']}"
        + (f", teacher targets {card['kd_targets']}" if card.get("kd_targets") else "")
        + f", seed {card['training']['seed']} ({card['train_seconds']:.0f} s on this CPU).",
        "",
        "| | |", "|---|---|",
        f"| dataset | {d['dataset']}, input {tuple(d['input_shape'])}, {d['num_classes']} classes |",
        f"| split | train {d['train_size']}, validation {d['val_size']} (carved from train, seed {d['split_seed']}), "
        f"test {d['test_size']} |",
        f"| FLOPs | {card['flops']:,} (fvcore); thop: {card['flops_thop']:,} |",
        f"| parameters | {card['params']:,} |",
        f"| validation accuracy | {card['val_accuracy']:.2%} (search proxy: {card['search_val_accuracy']:.2%}) |",
        f"| **test accuracy** | **{card['test_accuracy']:.2%}** |",
    ]
    if "ablation" in card:
        a = card["ablation"]
        lines.append(f"| labels only, same epochs and seed | {a['labels_only_test_accuracy']:.2%} test "
                     f"(KD gain {a['kd_gain_points']:+.2f} points) |")
    lines += [
        f"| teacher | {teacher['key']}: test {teacher['test_accuracy']:.2%}, "
        + (f"{teacher['flops']:,} FLOPs |" if teacher.get("flops") else "FLOPs not counted (brought teacher) |")
        if teacher else "| teacher | none (labels only) |",
        f"| latency per image (1 thread, batch 1) | PyTorch {lat['pytorch']:.0f} µs, "
        f"onnxruntime {lat['onnxruntime']:.0f} µs |",
        f"| ONNX vs PyTorch | max abs diff {card['onnx_max_abs_diff']:.1e} on {card['check_batch']} images |",
        "", f"FLOP convention: {card['flop_convention']}.", "",
        "Files: `spec.json` (architecture), `weights.safetensors`, `model.ts` (TorchScript), `model.onnx`.",
        "Load in Python: `nas_kd.load_student(folder)`.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    with interrupts.installed():  # a stop is a clean exit 130, with no work lost
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m nas_kd.export", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", required=True)
    p.add_argument("--studies-dir", default="studies")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///STUDIES_DIR/NAME.db)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--trial", type=int, help="trial number to export")
    group.add_argument("--pick", default="best", help="best (default), knee, or max-acc-under:BUDGET (e.g. :2M)")
    p.add_argument("--epochs", type=float, help=f"KD training epochs on the whole training split (default "
                   f"{EXPORT_EPOCHS}; {', '.join(f'{d} {n}' for d, n in DATASET_EXPORT_EPOCHS.items())}; more "
                   f"on small data: at least {EXPORT_MIN_STEPS} steps)")
    p.add_argument("--ablation", action="store_true", help="also train the same architecture from labels only")
    p.add_argument("--augment", help=f"{', '.join(AUGMENTATIONS)} (default: crop-flip for fashion-mnist, "
                   "none for other data)")
    p.add_argument("--kd-targets", default=DEFAULT_KD_TARGETS,
                   help=f"how the teacher's targets follow augmentation: {', '.join(KD_TARGETS)} "
                   f"(default {DEFAULT_KD_TARGETS}; see benchmarks/RESULTS.md)")
    p.add_argument("--seed", type=int, help="training seed (default: the study's)")
    p.add_argument("--out", help="export folder (default STUDIES_DIR/NAME/export-trialN)")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    try:
        study = open_named_study(a.study_name, a.studies_dir, a.storage)
        record = pick_trial(trial_records(study), trial=a.trial, pick=a.pick)
        out = Path(a.out) if a.out else Path(a.studies_dir) / a.study_name / f"export-trial{record.number}"
        result = export_trial(study, record, out, epochs=a.epochs, ablation=a.ablation, augment=a.augment,
                              kd_targets_mode=a.kd_targets, seed=a.seed, data_dir=a.data_dir, cache_dir=a.cache_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: no export was written; training is checkpointed every epoch, so the same "
              "command resumes it", file=sys.stderr)
        return 130
    c = result.card
    print(f"exported trial {c['trial']} to {result.folder}: {format_quantity(c['flops'])} FLOPs, "
          f"{format_quantity(c['params'])} params, test accuracy {c['test_accuracy']:.2%}"
          + (f" (labels only {c['ablation']['labels_only_test_accuracy']:.2%})" if "ablation" in c else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
