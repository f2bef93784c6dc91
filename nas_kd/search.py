"""``python -m nas_kd.search --budget 5MFLOPs``: find the best students that fit a compute budget.

Data flows one way: CLI → config → data, space, teacher → per trial: sample spec → count cost
(fvcore, milliseconds) → reject over-budget candidates untrained → train with KD → record in the
study → Pareto front table and files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import torch

from nas_kd.builder import build_student
from nas_kd.config import SAMPLERS, SearchConfig
from nas_kd.cost import FLOP_CONVENTION, count_cost
from nas_kd.data import Split, dataset_names, load_dataset, split_dataset
from nas_kd.distill import KDSettings, kd_loss_names
from nas_kd.errors import TrialFailed, UserError
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.space import SearchSpace, load_space
from nas_kd.study import (
    check_identity,
    front_records,
    make_sampler,
    open_study,
    redact_url,
    trial_records,
    write_front,
)
from nas_kd.teacher import load_or_train_teacher, teacher_logits
from nas_kd.train import TrainSettings, accuracy, train_model

MAX_SKIPS_PER_TRIAL = 200  # over-budget samples tolerated per wanted trial before giving up
MAX_UNEXPECTED_FAILURES = 3  # consecutive trial crashes of unknown cause before stopping


def parse_args(argv: list[str] | None) -> SearchConfig:
    p = argparse.ArgumentParser(
        prog="python -m nas_kd.search",
        description="Search for the most accurate student network within a compute budget, "
        "training every candidate with knowledge distillation from a teacher.",
        epilog=f"Cost convention: {FLOP_CONVENTION}.",
    )
    p.add_argument("--budget", default="5MFLOPs", help="FLOP budget, e.g. 5MFLOPs, 5M, 750k, 0.5G (default 5MFLOPs)")
    p.add_argument("--params", help="parameter budget, e.g. 50k (optional second constraint)")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(dataset_names())}")
    p.add_argument("--data-dir", help="folder with the dataset's files (Fashion-MNIST: the four IDX .gz files)")
    p.add_argument("--space", default="default", help="search space: a YAML file or a name in search_spaces/")
    p.add_argument("--trials", type=int, default=40, help="candidates to train in this run (default 40)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--study-name", help="study to create or resume (default: DATASET-BUDGET)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDIES_DIR/NAME.db)")
    p.add_argument("--studies-dir", default="studies", help="where studies and their outputs go")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), random or nsga2")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default 0)")
    p.add_argument("--epochs", type=float, default=2.0, help="training epochs per candidate (default 2)")
    p.add_argument("--train-subset", type=int, default=20000,
                   help="training images per candidate, 0 = all (default 20000)")
    p.add_argument("--val-size", type=float, help="validation images (≥ 1) or fraction (< 1) carved from train")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate, one-cycle SGD (default 0.1)")
    p.add_argument("--kd", default="hinton", help=f"distillation loss: {', '.join(kd_loss_names())}")
    p.add_argument("--temperature", type=float, default=4.0, help="KD temperature T (default 4)")
    p.add_argument("--alpha", type=float, default=0.9, help="KD weight; 0 = labels only (default 0.9)")
    p.add_argument("--teacher-seed", type=int, default=0, help="seed of the default teacher (default 0)")
    p.add_argument("--cache-dir", help="teacher cache (default ~/.cache/nas_kd or $NAS_KD_CACHE_DIR)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    a = p.parse_args(argv)
    if a.kd not in kd_loss_names():
        raise UserError(f"unknown distillation loss {a.kd!r}: choose one of {', '.join(kd_loss_names())}")
    return SearchConfig(
        dataset=a.dataset, data_dir=a.data_dir,
        budget_flops=parse_quantity(a.budget, what="--budget"),
        budget_params=parse_quantity(a.params, what="--params") if a.params else None,
        space=a.space, trials=a.trials, timeout=a.timeout, seed=a.seed, split_seed=a.split_seed,
        val_size=a.val_size, train_subset=a.train_subset or None,
        train=TrainSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed),
        kd=KDSettings(loss=a.kd, temperature=a.temperature, alpha=a.alpha),
        teacher_seed=a.teacher_seed, study_name=a.study_name, storage=a.storage,
        studies_dir=a.studies_dir, sampler=a.sampler, cache_dir=a.cache_dir, device=a.device,
        threads=a.threads,
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: {err}") from None


def _prepare_studies_dir(cfg: SearchConfig) -> None:
    folder = Path(cfg.studies_dir)
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        probe = cfg.out_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"cannot write to studies folder {folder} ({err.strerror or err}); "
            "choose another with --studies-dir"
        ) from None


def _check_budget(cfg: SearchConfig, space: SearchSpace, split: Split) -> None:
    spec, min_flops = space.cheapest(split.input_shape, split.num_classes)
    if cfg.budget_flops < min_flops:
        raise UserError(
            f"budget {format_quantity(cfg.budget_flops)} FLOPs is below the cheapest architecture of "
            f"space '{space.name}' at input {tuple(split.input_shape)}: {format_quantity(min_flops)} FLOPs "
            f"({spec.summary()}). Raise --budget to at least {min_flops} or use a smaller --space"
        )
    if cfg.budget_params is not None:
        params = count_cost(build_student(spec), split.input_shape).params
        if cfg.budget_params < params:
            raise UserError(
                f"parameter budget {format_quantity(cfg.budget_params)} is below the cheapest "
                f"architecture of space '{space.name}': {params} parameters ({spec.summary()})"
            )


def _identity(cfg: SearchConfig, split: Split, space: SearchSpace) -> dict:
    return {
        "dataset": split.description["dataset"],
        "input_shape": list(split.input_shape),
        "num_classes": split.num_classes,
        "split": {k: split.description[k] for k in ("train_size", "val_size", "split_seed", "fingerprint")},
        "space_sha256": space.sha256,
        "budget_flops": cfg.budget_flops,
        "budget_params": cfg.budget_params,
        "train": asdict(cfg.train),
        "train_subset": cfg.train_subset,
        "kd": asdict(cfg.kd),
        "flop_convention": FLOP_CONVENTION,
    }


def run_search(cfg: SearchConfig, progress: Progress | None = None) -> list:
    """Run (or resume) the study described by ``cfg``; return the Pareto front records."""
    progress = progress or Progress()
    device = _device(cfg.device)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    n_train = len(data.y_train)
    val_size = cfg.val_size if cfg.val_size is not None else min(5000, round(0.15 * n_train))
    split = split_dataset(data, val_size=val_size, seed=cfg.split_seed)
    space = load_space(cfg.space)
    _check_budget(cfg, space, split)
    _prepare_studies_dir(cfg)
    study = open_study(cfg.name, cfg.storage_url)
    identity = _identity(cfg, split, space)
    check_identity(study, identity)
    study.set_user_attr("nas_kd.settings", {
        "config": {**cfg.to_dict(), "storage": redact_url(cfg.storage_url)},
        "data": split.description, "space": {"name": space.name, "source": space.source},
        "flop_convention": FLOP_CONVENTION,
    })

    t_logits = None
    if cfg.kd.uses_teacher:
        teacher = load_or_train_teacher(split, seed=cfg.teacher_seed, cache_dir=cfg.cache_dir,
                                        progress=progress, device=device)
        teacher_info = {k: teacher.info[k] for k in
                        ("key", "sha256", "val_accuracy", "test_accuracy", "arch", "flops", "params")}
        check_identity(study, {"teacher": {k: teacher_info[k] for k in ("key", "sha256")}})
        study.set_user_attr("nas_kd.teacher", teacher_info)
        t_logits_all = teacher_logits(teacher, split, cache_dir=cfg.cache_dir)
    idx = split.subset_index(cfg.train_subset, cfg.split_seed)
    x_train, y_train = split.x_train[idx], split.y_train[idx]
    if cfg.kd.uses_teacher:
        t_logits = t_logits_all[idx]

    n_before = len(study.trials)
    study.sampler = make_sampler(cfg.sampler, cfg.seed + n_before)  # resumed runs draw new samples
    progress.log(
        f"study {cfg.name!r} in {redact_url(cfg.storage_url)} ({'resuming, ' if n_before else ''}"
        f"{n_before} trials so far) | budget {format_quantity(cfg.budget_flops)} FLOPs"
        + (f", {format_quantity(cfg.budget_params)} params" if cfg.budget_params else "")
        + f" | {cfg.kd.describe()} | {cfg.train.epochs:g} epochs on {len(y_train)} images"
    )
    progress.log(f"cost convention: {FLOP_CONVENTION}")
    _loop(cfg, study, space, split, (x_train, y_train, t_logits), device, progress)
    records = trial_records(study)
    front = front_records(records)
    if front:
        write_front(front, cfg.out_dir)
    return front


def _loop(cfg, study, space, split, train_data, device, progress) -> None:  # noqa: ANN001
    x_train, y_train, t_logits = train_data
    shape, budget = split.input_shape, cfg.budget_flops
    known = {
        t.user_attrs["spec_json"]: t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "trained" and "spec_json" in t.user_attrs
    }
    best = max((t.values[0] for t in known.values()), default=None)
    trained = skipped = duplicates = unexpected = 0
    start = time.perf_counter()
    train_times: list[float] = []

    def status(extra: str = "") -> str:
        best_text = f"{best:.2%}" if best is not None else "-"
        return (f"trial {min(trained + 1, cfg.trials)}/{cfg.trials} | {format_seconds(time.perf_counter() - start)} "
                f"| best val {best_text} | skipped {skipped} over budget" + (f" | {extra}" if extra else ""))

    while trained < cfg.trials:
        if cfg.timeout is not None and time.perf_counter() - start > cfg.timeout:
            progress.log(f"timeout of {cfg.timeout:g} s reached after {trained} trained trials")
            break
        if skipped > MAX_SKIPS_PER_TRIAL * cfg.trials:
            raise UserError(
                f"gave up after {skipped} candidates over budget: the space rarely fits "
                f"{format_quantity(budget)} FLOPs; raise --budget or use a smaller --space"
            )
        trial = study.ask()
        spec = space.sample(trial, shape, split.num_classes)
        torch.manual_seed(cfg.seed)
        model = build_student(spec)
        cost = count_cost(model, shape)
        spec_json = spec.to_json()
        for key, value in (("spec", spec.to_dict()), ("spec_json", spec_json), ("summary", spec.summary()),
                           ("flops", cost.flops), ("params", cost.params)):
            trial.set_user_attr(key, value)
        trial.set_constraint("flops", cost.flops - budget)
        if cfg.budget_params is not None:
            trial.set_constraint("params", cost.params - cfg.budget_params)
        if cost.flops > budget or (cfg.budget_params is not None and cost.params > cfg.budget_params):
            trial.set_user_attr("status", "infeasible")
            study.tell(trial, [0.0, float(cost.flops)])
            skipped += 1
            progress.status(status())
            continue
        if spec_json in known:  # the same architecture under the same seed trains identically
            earlier = known[spec_json]
            for key in ("val_accuracy", "train_seconds"):
                trial.set_user_attr(key, earlier.user_attrs.get(key))
            trial.set_user_attr("status", "duplicate")
            trial.set_user_attr("duplicate_of", earlier.number)
            study.tell(trial, [earlier.values[0], float(cost.flops)])
            duplicates += 1
            continue

        progress.status(status(f"#{trial.number} training {format_quantity(cost.flops)} FLOPs"), force=True)
        try:
            model = model.to(device).to(memory_format=torch.channels_last)
            def on_step(step: int, total: int, _loss: float, number: int = trial.number) -> None:
                progress.status(status(f"#{number} training {step / total:.0%}"))

            result = train_model(model, x_train, y_train, cfg.train, kd=cfg.kd, teacher_logits=t_logits,
                                 on_step=on_step)
            val_acc = accuracy(model, split.x_val, split.y_val)
        except KeyboardInterrupt:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", "interrupted by the user")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except (TrialFailed, torch.OutOfMemoryError, MemoryError) as err:
            _fail(study, trial, f"{type(err).__name__}: {err}", progress)
            trained += 1
            continue
        except Exception as err:  # noqa: BLE001 - a bug must not lose the study; stop after a few
            unexpected += 1
            _log_error(cfg, trial.number, spec_json)
            _fail(study, trial, f"{type(err).__name__}: {err} (traceback in {cfg.out_dir / 'errors.log'})", progress)
            if unexpected >= MAX_UNEXPECTED_FAILURES:
                raise RuntimeError(f"{unexpected} trials in a row crashed; see {cfg.out_dir / 'errors.log'}") from err
            trained += 1
            continue
        unexpected = 0
        trial.set_user_attr("status", "trained")
        trial.set_user_attr("val_accuracy", val_acc)
        trial.set_user_attr("train_seconds", round(result.seconds, 2))
        _save_weights(cfg, trial.number, model)
        frozen = study.tell(trial, [val_acc, float(cost.flops)])
        known[spec_json] = frozen
        trained += 1
        train_times.append(result.seconds)
        best = val_acc if best is None else max(best, val_acc)
        progress.log(
            f"#{trial.number:<4d} [{trained}/{cfg.trials}] val {val_acc:6.2%} | "
            f"{format_quantity(cost.flops):>6s} FLOPs | {format_quantity(cost.params):>6s} params | "
            f"{result.seconds:5.1f} s | {spec.summary()}"
        )
    elapsed = time.perf_counter() - start
    per_trial = elapsed / trained if trained else 0.0
    progress.log(
        f"ran {trained} trained trials in {format_seconds(elapsed)} ({per_trial:.1f} s per trial, "
        f"{sum(train_times) / max(1, len(train_times)):.1f} s of it training), skipped {skipped} over budget"
        + (f", {duplicates} repeated architectures reused" if duplicates else "")
    )


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, progress: Progress) -> None:
    trial.set_user_attr("status", "failed")
    trial.set_user_attr("fail_reason", reason[:1000])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    progress.log(f"#{trial.number:<4d} failed: {reason}")


def _log_error(cfg: SearchConfig, number: int, spec_json: str) -> None:
    with open(cfg.out_dir / "errors.log", "a") as f:
        f.write(f"--- trial {number} spec {spec_json}\n{traceback.format_exc()}\n")


def _save_weights(cfg: SearchConfig, number: int, model: torch.nn.Module) -> None:
    folder = cfg.out_dir / "trials"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{number}.pt.tmp"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(folder / f"{number}.pt")


def format_front(front: list, budget_flops: int) -> str:
    """The front as a readable table (cheapest first)."""
    lines = [
        f"Pareto front: validation accuracy vs FLOPs (budget {format_quantity(budget_flops)}; "
        "1 multiply-add = 1 FLOP, fvcore)",
        f"{'trial':>5}  {'val acc':>7}  {'FLOPs':>7}  {'params':>7}  {'train s':>7}  architecture",
    ]
    for r in front:
        lines.append(
            f"{r.number:>5}  {r.val_accuracy:7.2%}  {format_quantity(r.flops):>7}  {format_quantity(r.params):>7}  "
            f"{(r.train_seconds or 0):7.1f}  {r.summary}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = None
    try:
        cfg = parse_args(argv)
        front = run_search(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        name = f" --study-name {cfg.name}" if cfg else ""
        print(f"\ninterrupted: finished trials are saved; run the same command{name and ' (' + name.strip() + ')'} "
              "to resume", file=sys.stderr)
        return 130
    if not front:
        print("no trained candidate fits the budget yet: run more trials", file=sys.stderr)
        _write_report(cfg)
        return 0
    print(format_front(front, cfg.budget_flops))
    print(f"front written to {cfg.out_dir / 'front.csv'} and {cfg.out_dir / 'front.json'}")
    _write_report(cfg)
    return 0


def _write_report(cfg: SearchConfig) -> None:
    """The finished study's HTML report; failing to write it is a note, never a failed search."""
    try:
        from nas_kd.report import write_report
        from nas_kd.study import load_existing_study

        print(f"report: {write_report(load_existing_study(cfg.name, cfg.storage_url), cfg.out_dir)}")
    except Exception as err:  # noqa: BLE001
        print(f"note: no report written ({type(err).__name__}: {err})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
