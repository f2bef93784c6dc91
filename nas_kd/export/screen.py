"""Screening before an export (``--screen K``): the K best trials under the pick's rule, each trained
by a short run of the export's own recipe; the one with the highest validation accuracy is exported.

Why: at the top of a study the search's scores rank within noise. Leads at the search's longest rung
have not survived export (benchmarks/RESULTS.md), while a 20-epoch export run ranked the hand designs
as 60 epochs did. Test accuracy is never read here: the choice is made on validation.

Each screening run is checkpointed every epoch in the study's ``screening`` folder and its result kept
there as JSON, so an interrupted screening resumes and a finished one (another seed's export, or a
rerun with ``--int8``) is not trained again."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch

from nas_kd.distill.losses import needs_features
from nas_kd.export.retrain import Recipe, TrainingClock, fit, read_recipe, run_name
from nas_kd.files import write_json
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress, format_seconds
from nas_kd.study.records import TrialRecord
from nas_kd.train import accuracy

SCREEN_EPOCHS = 20  # the length proxy fidelity is measured against (issue 19)
# On by default before long exports only: there K × 20 epochs add at most 0.8× the export's own training,
# and a 20-epoch run looks further than the search did. Before a 20-epoch export it would not.
SCREEN_DEFAULT = 4
LONG_EXPORT_EPOCHS = 5 * SCREEN_EPOCHS
WAIT_SECONDS = 10.0  # how often an export waiting for another's screening looks again


@dataclass(frozen=True)
class Screened:
    record: TrialRecord
    val_accuracy: float
    seconds: float  # training seconds, including the runs it resumed
    seed: int


def default_screen(*, trial: int | None, pick: str, export_epochs: float) -> int:
    """``--screen``'s default: ``SCREEN_DEFAULT`` when the pick is a ranking (``best`` or
    ``max-acc-under``) and the export trains at least ``LONG_EXPORT_EPOCHS``; else 1 (no screening)."""
    ranked = trial is None and (pick == "best" or pick.startswith("max-acc-under"))
    return SCREEN_DEFAULT if ranked and export_epochs >= LONG_EXPORT_EPOCHS else 1


def screening_folder(studies_dir: str | Path, study_name: str) -> Path:
    """Where a study's screening runs keep their checkpoints and results."""
    return Path(studies_dir) / study_name / "screening"


def screen_trials(study: optuna.Study, candidates: list[TrialRecord], folder: Path, *, epochs: float,
                  augment: str | None, kd_targets_mode: str, data_dir: str | None, cache_dir: str | None,
                  progress: Progress) -> list[Screened]:
    """Train each of ``candidates`` for ``epochs`` with the export's KD recipe (its augmentation and
    targets, the study's seed) and score it on validation; the results in the order given.

    The study's seed, not the export's: exports of one study at several seeds share one screening and
    ship the same architecture. Exports screening at once share the work: each trains the candidates
    no other is training (a claim file per run) and waits for the rest."""
    recipes = _recipes(study, candidates, epochs=epochs, augment=augment, kd_targets_mode=kd_targets_mode,
                       data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    names = {r.number: run_name(f"trial{r.number}", study=study.study_name, kd=asdict(recipes[r.number].kd),
                                **recipes[r.number].run_key()) for r in candidates}
    clock, results, waiting = TrainingClock(trainings=len(candidates)), {}, False
    while len(results) < len(candidates):
        trained_here = False
        for i, record in enumerate(candidates, 1):
            if record.number in results:
                continue
            recipe, name = recipes[record.number], names[record.number]
            done = _result(folder / f"{name}.json")
            if done is None and _claim(folder / f"{name}.claim"):
                # the time left counts only what no other export trains (fit counts this one)
                clock.not_started = 1 + sum(not _taken(folder, names[r.number]) for r in candidates
                                            if r.number not in results and r.number != record.number)
                try:
                    done = _screen(recipe, folder / name, f"screening {i}/{len(candidates)}, trial {record.number}",
                                   clock, progress)
                finally:
                    (folder / f"{name}.claim").unlink(missing_ok=True)
                trained_here = True
            if done is not None:
                results[record.number] = Screened(record, done["val_accuracy"], done["seconds"],
                                                  recipe.settings.seed)
                progress.log(f"export: screened trial {record.number} ({record.flops / 1e6:.2f}M FLOPs, search "
                             f"{record.val_accuracy:.2%}): {epochs:g} epochs, val {done['val_accuracy']:.2%} "
                             f"({format_seconds(done['seconds'])})")
        if len(results) < len(candidates) and not trained_here:
            if not waiting:
                progress.log(f"export: waiting for another export screening trial(s) "
                             f"{', '.join(str(r.number) for r in candidates if r.number not in results)}")
            waiting = True
            time.sleep(WAIT_SECONDS)
    return [results[r.number] for r in candidates]


def _recipes(study: optuna.Study, candidates: list[TrialRecord], **read: object) -> dict[int, Recipe]:
    """Each candidate's recipe. The data, teacher and targets are read once: candidates with the same KD
    settings as the first (all of them, unless searched with ``--kd search``) differ from it only by spec."""
    first = read_recipe(study, candidates[0], seed=None, **read)
    return {r.number: dataclasses.replace(first, spec=ArchSpec.from_dict(r.spec)) if r.kd == candidates[0].kd
            else read_recipe(study, r, seed=None, **read) for r in candidates}


def _screen(recipe: Recipe, stem: Path, label: str, clock: TrainingClock, progress: Progress) -> dict:
    """Train one candidate (resuming from ``stem``.pt), write its result to ``stem``.json, and return it."""
    torch.manual_seed(recipe.settings.seed)
    model = build_student(recipe.spec).to(memory_format=torch.channels_last)
    checkpoint = None if needs_features(recipe.kd.loss) else stem.with_suffix(".pt")
    seconds = fit(recipe, model, recipe.kd, recipe.targets, label, checkpoint, clock, progress)
    done = {"val_accuracy": accuracy(model, recipe.split.x_val, recipe.split.y_val), "seconds": seconds}
    write_json(stem.with_suffix(".json"), done)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return done


def _result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _taken(folder: Path, name: str) -> bool:
    """Whether the run ``name`` was screened already or another live export is screening it."""
    claim = folder / f"{name}.claim"
    return _result(folder / f"{name}.json") is not None or (claim.exists() and _claimed_by_live_process(claim))


def _claim(path: Path) -> bool:
    """Whether this process may train the run ``path`` names: no other live process on this machine claims it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if _claimed_by_live_process(path):
            return False
        path.unlink(missing_ok=True)  # its process stopped: the checkpoint it left is resumed here
        return _claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}")
    return True


def _claimed_by_live_process(path: Path) -> bool:
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        return True  # being written this instant
    if host != socket.gethostname():
        return True  # another machine's: it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def chosen(results: list[Screened]) -> Screened:
    """The highest validation accuracy after screening; of equals, the cheaper."""
    return max(results, key=lambda s: (s.val_accuracy, -s.record.flops))


def screening_entry(results: list[Screened], epochs: float) -> dict:
    """The model card's ``screening``: every candidate's search and screening scores, and the choice."""
    return {"epochs": epochs, "seed": results[0].seed, "chosen_by": "validation accuracy",
            "chosen_trial": chosen(results).record.number,
            "candidates": [{"trial": s.record.number, "flops": s.record.flops,
                            "search_val_accuracy": s.record.val_accuracy, "screen_val_accuracy": s.val_accuracy,
                            "train_seconds": round(s.seconds, 3)} for s in results]}
