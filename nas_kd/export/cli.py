"""``python -m nas_kd.export --study-name NAME``: retrain a chosen student longer with KD and ship it.

The export folder holds the spec (JSON), weights (safetensors), TorchScript, ONNX (checked against
onnxruntime), and a model card (Markdown + JSON) with cost, accuracy and latency measured here;
with ``--int8`` also an int8 ONNX file, measured beside the fp32 one (re-run on a finished export,
it quantizes that student without retraining it).
It is written to a temporary folder and moved into place, so a failed export leaves no folder behind;
its trainings are checkpointed every epoch, and the same command resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from nas_kd.cli.runner import positive_float, positive_int, run_command, set_threads
from nas_kd.errors import UserError
from nas_kd.export.pick import add_trial_arguments, pick_trial, ranked_trials
from nas_kd.export.qat import QAT_EPOCHS
from nas_kd.export.quantize import CALIBRATION_IMAGES, DEFAULT_MAX_DROP, INT8_FILE
from nas_kd.export.retrain import (
    DATASET_EXPORT_EPOCHS,
    DEFAULT_KD_TARGETS,
    EXPORT_EPOCHS,
    EXPORT_MIN_STEPS,
    dataset_export_epochs,
)
from nas_kd.export.schemes import (
    DEFAULT_GENERATIONS,
    DEFAULT_PEERS,
    DEFAULT_SCHEME,
    SchemeOptions,
    check_options,
    scheme_names,
)
from nas_kd.export.screen import (
    LONG_EXPORT_EPOCHS,
    SCREEN_DEFAULT,
    SCREEN_EPOCHS,
    chosen,
    default_screen,
    screen_trials,
    screening_entry,
    screening_folder,
)
from nas_kd.export.trial import export_trial
from nas_kd.progress import Progress
from nas_kd.quantity import format_quantity
from nas_kd.study.records import IDENTITY_ATTR, TrialRecord, trial_records
from nas_kd.study.storage import open_named_study
from nas_kd.teacher import KD_TARGETS
from nas_kd.train import AUGMENTATIONS

STOPPED = ("no export was written (a finished one being quantized is left as it was); training is checkpointed "
           "every epoch, so the same command resumes it")


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: sys.argv); 0 when exported, 2 on a mistake, 130 after a stop."""
    return run_command(lambda: _export(parser().parse_args(argv)), on_interrupt=STOPPED)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas_kd.export", description=__doc__.splitlines()[0])
    add_trial_arguments(p, "export")
    p.add_argument("--epochs", type=float, help=f"KD training epochs on the whole training split (default "
                   f"{EXPORT_EPOCHS}; {', '.join(f'{d} {n}' for d, n in DATASET_EXPORT_EPOCHS.items())}; more "
                   f"on small data: at least {EXPORT_MIN_STEPS} steps)")
    p.add_argument("--recipe", default=DEFAULT_SCHEME,
                   help=f"how the student is distilled: {', '.join(scheme_names())} (default {DEFAULT_SCHEME}: "
                   "KD from the study's teacher; ban: born-again generations; dml: peers learning from each "
                   "other; takd: through a teacher assistant; see docs/export.md)")
    p.add_argument("--generations", type=int, help=f"--recipe ban: generations (default {DEFAULT_GENERATIONS}), "
                   "each trained --epochs")
    p.add_argument("--peers", type=int, help=f"--recipe dml: students trained together (default {DEFAULT_PEERS})")
    p.add_argument("--exits", action="store_true", help="ship the student with an early exit after every stage "
                   "(trained by --recipe self, which this implies); the card gives accuracy, mean FLOPs and latency "
                   "per confidence threshold")
    p.add_argument("--screen", type=positive_int("--screen"), metavar="K",
                   help="first train the K best trials under --pick for --screen-epochs each with this export's "
                   f"KD recipe, then export the one with the highest validation accuracy (default {SCREEN_DEFAULT} "
                   f"with --pick best or max-acc-under before an export of {LONG_EXPORT_EPOCHS} epochs or more, "
                   "as on Fashion-MNIST; else 1: no screening; see docs/export.md)")
    p.add_argument("--screen-epochs", type=positive_float("--screen-epochs"),
                   help=f"--screen: epochs of each screening run (default {SCREEN_EPOCHS})")
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
    p.add_argument("--threads", type=positive_int("--threads"), help="PyTorch CPU threads (default: every core)")
    p.add_argument("--int8", action="store_true",
                   help=f"also write {INT8_FILE}: onnxruntime static quantization calibrated on {CALIBRATION_IMAGES} "
                   "training images, scored and timed beside fp32; on a finished export of the same settings it "
                   "quantizes that student without retraining")
    p.add_argument("--int8-max-drop", type=max_drop, default=DEFAULT_MAX_DROP,
                   help=f"points of validation accuracy int8 may lose (default {DEFAULT_MAX_DROP:g}); beyond that "
                   f"the student is fine-tuned quantization-aware with KD ({QAT_EPOCHS} epochs) and quantized "
                   "again; 0 always fine-tunes")
    return p


def max_drop(text: str) -> float:
    """``--int8-max-drop``: a number of points ≥ 0 (raises UserError: one error line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise UserError(f"--int8-max-drop must be a number of accuracy points, 0 or more (e.g. 0.5), got {text!r}")
    return value


def scheme_options(a: argparse.Namespace) -> SchemeOptions:
    """``--recipe`` and its knobs; a knob given to another recipe is a mistake (UserError), not ignored."""
    for flag, value, owner in (("--generations", a.generations, "ban"), ("--peers", a.peers, "dml")):
        if value is not None and a.recipe != owner:
            raise UserError(f"{flag} applies to --recipe {owner}, not --recipe {a.recipe}")
    if a.exits and a.recipe not in (DEFAULT_SCHEME, "self"):
        raise UserError(f"--exits are trained by --recipe self, not --recipe {a.recipe}")
    if a.exits and a.int8:
        raise UserError("--int8 does not quantize early-exit students yet: export without --exits for int8")
    name = "self" if a.exits else a.recipe
    options = SchemeOptions(name, generations=DEFAULT_GENERATIONS if a.generations is None else a.generations,
                            peers=DEFAULT_PEERS if a.peers is None else a.peers, exits=a.exits)
    check_options(options)
    return options


def _export(a: argparse.Namespace) -> int:
    scheme = scheme_options(a)
    set_threads(a.threads)
    study = open_named_study(a.study_name, a.studies_dir, a.storage)
    record, screening = _picked(a, study)
    out = Path(a.out) if a.out else Path(a.studies_dir) / a.study_name / f"export-trial{record.number}"
    result = export_trial(study, record, out, epochs=a.epochs, ablation=a.ablation, augment=a.augment,
                          kd_targets_mode=a.kd_targets, seed=a.seed, data_dir=a.data_dir, cache_dir=a.cache_dir,
                          int8_max_drop=a.int8_max_drop if a.int8 else None, scheme=scheme, screening=screening)
    c = result.card
    print(f"{'exported' if result.retrained else 'quantized the finished export of'} trial {c['trial']} "
          f"{'to' if result.retrained else 'in'} {result.folder}: {format_quantity(c['flops'])} FLOPs, "
          f"{format_quantity(c['params'])} params, test accuracy {c['test_accuracy']:.2%}"
          + (f" (labels only {c['ablation']['labels_only_test_accuracy']:.2%})" if "ablation" in c else "")
          + (int8_summary(c["int8"]) if "int8" in c else ""))
    return 0


def _picked(a: argparse.Namespace, study: optuna.Study) -> tuple[TrialRecord, dict | None]:
    """The trial to export and, when screening (``--screen K``, on by default before a long export),
    the card's screening entry (else None)."""
    k = a.screen or default_screen(trial=a.trial, pick=a.pick, export_epochs=_export_length(a, study))
    if a.screen_epochs is not None and k == 1:
        raise UserError(f"--screen-epochs applies with --screen K (K of 2 or more); without --screen only exports "
                        f"of {LONG_EXPORT_EPOCHS} epochs or more under --pick best or max-acc-under are screened")
    if k > 1 and a.trial is not None:
        raise UserError("--screen chooses among the best trials under --pick: give --pick, not --trial")
    records = trial_records(study)
    candidates = ranked_trials(records, a.pick, k) if k > 1 else []
    if len(candidates) < (1 if a.screen else 2):  # by default, screening one trial is no choice
        return pick_trial(records, trial=a.trial, pick=a.pick), None
    epochs, progress = a.screen_epochs or SCREEN_EPOCHS, Progress()
    if a.screen is None:
        progress.log(f"export: screening the {len(candidates)} best trials under --pick {a.pick} for {epochs:g} "
                     "epochs each before the export, the default before a long export (--screen 1 skips it)")
    results = screen_trials(study, candidates, screening_folder(a.studies_dir, a.study_name), epochs=epochs,
                            augment=a.augment, kd_targets_mode=a.kd_targets, data_dir=a.data_dir,
                            cache_dir=a.cache_dir, progress=progress)
    return chosen(results).record, screening_entry(results, epochs)


def _export_length(a: argparse.Namespace, study: optuna.Study) -> float:
    """The export's epochs: ``--epochs``, else its dataset's default (before any stretch for small data)."""
    if a.epochs is not None:
        return a.epochs
    return dataset_export_epochs(study.user_attrs.get(IDENTITY_ATTR, {}).get("dataset", ""))


def int8_summary(q: dict) -> str:
    """The printed line's int8 part: its test accuracy, how it was made, and a missed drop said plainly."""
    text = (f"; int8 {q['test_accuracy']['int8']:.2%} ({q['method']}, {q['latency_us_per_image']['int8']:.0f} µs "
            f"vs {q['latency_us_per_image']['fp32']:.0f} µs)")
    if not q["within_max_drop"]:
        text += (f"; WARNING: int8 loses {q['val_drop_points']:.2f} points of validation accuracy, more than "
                 f"--int8-max-drop {q['max_drop_points']:g}"
                 + (" even after quantization-aware training" if q["qat"] else ""))
    return text


if __name__ == "__main__":
    sys.exit(main())
