"""``python -m nas_kd.compress --study-name NAME --to 2MFLOPs``: prune a trained student's channels
down to a smaller FLOP budget, in steps with KD fine-tuning between them, and ship it like export.

The start is the trial's student trained as ``nas_kd.export`` trains it (``--epochs``), or a finished
export folder of that trial (``--from-export``). The result is a smaller dense network; the export
folder holds export's files plus ``pruned_shapes.json`` and the pruning schedule in the model card.
Every training is checkpointed every epoch, and the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas_kd.cli.runner import positive_int, run_command, set_threads
from nas_kd.compress.prune import check_reachable
from nas_kd.compress.run import compress_trial
from nas_kd.compress.schedule import Plan
from nas_kd.compress.start import export_settings, read_export_card, start_student
from nas_kd.errors import UserError
from nas_kd.export.pick import add_trial_arguments, pick_trial
from nas_kd.export.retrain import DEFAULT_KD_TARGETS, read_recipe
from nas_kd.model.builder import build_student
from nas_kd.model.cost import count_flops
from nas_kd.progress import Progress
from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.study.records import trial_records
from nas_kd.study.storage import open_named_study
from nas_kd.teacher import KD_TARGETS
from nas_kd.train import AUGMENTATIONS

STOPPED = "no export was written; training is checkpointed every epoch, so the same command resumes it"
DEFAULT_STEPS = 3
FINETUNE_SHARE = 0.1  # default fine-tuning per step: this share of the start's training epochs


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: sys.argv); 0 when exported, 2 on a mistake, 130 after a stop."""
    return run_command(lambda: _compress(parser().parse_args(argv)), on_interrupt=STOPPED)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas_kd.compress", description=__doc__.splitlines()[0])
    add_trial_arguments(p, "prune")
    p.add_argument("--to", required=True, help="the FLOP budget to prune to (fvcore count, e.g. 2MFLOPs, 750k)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"pruning steps, each followed by fine-tuning (default {DEFAULT_STEPS})")
    p.add_argument("--finetune-epochs", type=float,
                   help=f"KD fine-tuning epochs after each step (default: {FINETUNE_SHARE:g} of the start's epochs)")
    p.add_argument("--from-export", help="start from this finished export folder of the trial instead of training")
    p.add_argument("--epochs", type=float, help="KD training epochs of the start (default: export's)")
    p.add_argument("--augment", help=f"{', '.join(AUGMENTATIONS)} (default: export's)")
    p.add_argument("--kd-targets", help=f"{', '.join(KD_TARGETS)} (default {DEFAULT_KD_TARGETS}, or the export's)")
    p.add_argument("--seed", type=int, help="training seed (default: the study's, or the export's)")
    p.add_argument("--out", help="export folder (default STUDIES_DIR/NAME/pruned-trialN-toBUDGET)")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=positive_int("--threads"), help="PyTorch CPU threads (default: every core)")
    return p


def _compress(a: argparse.Namespace) -> int:
    to = parse_quantity(a.to, what="--to budget")
    _check_numbers(a)
    set_threads(a.threads)
    study = open_named_study(a.study_name, a.studies_dir, a.storage)
    record = pick_trial(trial_records(study), trial=a.trial, pick=a.pick)
    name = f"pruned-trial{record.number}-to{format_quantity(to)}"
    out = Path(a.out) if a.out else Path(a.studies_dir) / a.study_name / name
    export = Path(a.from_export) if a.from_export else None
    chosen = {"epochs": a.epochs, "augment": a.augment, "seed": a.seed, "kd_targets_mode": a.kd_targets}
    if export is not None:  # fine-tune as the export was trained, unless told otherwise
        made = export_settings(read_export_card(export, study.study_name, record))
        chosen = {k: made[k] if v is None else v for k, v in chosen.items()}
    chosen["kd_targets_mode"] = chosen["kd_targets_mode"] or DEFAULT_KD_TARGETS
    progress = Progress()
    recipe = read_recipe(study, record, **chosen, data_dir=a.data_dir, cache_dir=a.cache_dir, progress=progress)
    fresh, shape = build_student(recipe.spec), recipe.split.input_shape
    own = count_flops(fresh, shape)
    if to >= own:
        raise UserError(f"--to {format_quantity(to)} ({to:,}) FLOPs is not below trial {record.number}'s own cost, "
                        f"{format_quantity(own)} ({own:,}) FLOPs: nothing to prune; choose a smaller --to")
    check_reachable(fresh, shape, to)
    plan = Plan(to, a.steps, a.finetune_epochs or recipe.settings.epochs * FINETUNE_SHARE)
    start = start_student(recipe, out, export, progress)
    c = compress_trial(study.study_name, record, recipe, plan, start, out, progress).card
    print(f"pruned trial {c['trial']} to {out}: {format_quantity(c['flops'])} FLOPs (from "
          f"{format_quantity(own)}), {format_quantity(c['params'])} params, test accuracy {c['test_accuracy']:.2%} "
          f"(before pruning {start.entry['test_accuracy']:.2%})")
    return 0


def _check_numbers(a: argparse.Namespace) -> None:
    if a.steps < 1:
        raise UserError(f"--steps must be at least 1, got {a.steps}")
    if a.finetune_epochs is not None and not a.finetune_epochs > 0:
        raise UserError(f"--finetune-epochs must be above 0, got {a.finetune_epochs:g}")
    if a.from_export and a.epochs is not None:
        raise UserError("--epochs trains the start, which --from-export already holds: give one of them")


if __name__ == "__main__":
    sys.exit(main())
