"""Everything a process needs before its first trial, checked and built once.

Data tensors and their split, the space, the study (opened or resumed, its identity checked), the
teacher's logits: none of it depends on the candidate, so the trial loop only samples and trains.
The parent process also records the run's settings on a new study and enqueues its warm start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import torch

from nas_kd.cli.runner import set_threads
from nas_kd.data import Split, default_val_size, load_dataset, split_dataset
from nas_kd.distill import kd_loss_names, needs_features
from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.cost import FLOP_CONVENTION, count_cost
from nas_kd.model.latency import LATENCY_METHOD, LatencyCache, format_duration, machine_id
from nas_kd.model.memory import MEMORY_CONVENTION, count_footprint
from nas_kd.model.spec import ArchSpec, parse_summary
from nas_kd.progress import Progress
from nas_kd.quantity import format_bytes, format_quantity
from nas_kd.search.config import SearchConfig
from nas_kd.search.flags import recorded_flags
from nas_kd.search.space import SearchSpace, load_space
from nas_kd.study.records import IDENTITY_ATTR, SETTINGS_ATTR, TEACHER_ATTR, Attr
from nas_kd.study.requeue import requeue_stopped_designs
from nas_kd.study.storage import check_identity, open_study, redact_url
from nas_kd.teacher import check_teacher_sources, default_teacher, load_teacher, teacher_logits
from nas_kd.teacher.cache import default_cache_dir

LatencyFn = Callable[[torch.nn.Module, ArchSpec], float]  # a candidate's latency in µs

@dataclass
class Run:
    """What one process needs to run trials: built once, used by every trial."""

    cfg: SearchConfig
    split: Split
    space: SearchSpace
    study: optuna.Study
    x_train: torch.Tensor
    y_train: torch.Tensor
    teacher_logits: torch.Tensor | None
    device: torch.device
    teacher: torch.nn.Module | None = None  # kept for losses that need teacher features
    kd_losses: tuple[str, ...] = ()  # what --kd search may choose from (feature losses need a module)
    latency: LatencyFn | None = None  # µs of a candidate on this machine, when measured
    started: float = 0.0  # time.perf_counter() when the process began preparing: --timeout counts from it


def prepare(cfg: SearchConfig, progress: Progress) -> Run:
    """Check every input, open (or resume) the study, and get the teacher's logits ready."""
    started = time.perf_counter()
    device = _device(cfg.device)
    set_threads(cfg.threads)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    val_size = cfg.val_size if cfg.val_size is not None else default_val_size(len(data.y_train))
    split = split_dataset(data, val_size=val_size, seed=cfg.split_seed)
    space = load_space(cfg.space)
    _check_budget(cfg, space, split)
    latency = _latency_meter(cfg, split, space) if cfg.uses_latency else None
    if cfg.kd.uses_teacher:
        check_teacher_sources(cfg.dataset, cfg.teachers, cfg.teacher_weights, cfg.teacher_files)
    _prepare_studies_dir(cfg)
    study = open_study(cfg.name, cfg.storage_url)
    _check_older_study(study, cfg)
    check_identity(study, identity(cfg, split, space))
    if cfg.uses_latency:  # latencies from another kind of machine or thread count would not compare
        check_identity(study, {"latency_machine": {**machine_id(), "threads": cfg.latency_threads},
                               "latency_method": LATENCY_METHOD})
    if cfg.worker_index is None and SETTINGS_ATTR not in study.user_attrs:
        _record_settings(study, cfg, split, space, _effective(cfg, val_size, device))
    if cfg.worker_index is None and not study.trials and cfg.warm_start:
        _enqueue_warm_start(study, space, split, progress)
    elif cfg.worker_index is None:  # before any worker starts: one process decides
        _requeue_stopped(study, progress)
    idx = split.subset_index(cfg.train_subset, cfg.split_seed)
    run = Run(cfg, split, space, study, split.x_train[idx], split.y_train[idx], None, device, latency=latency,
              started=started)
    return _with_teacher(run, idx, progress) if cfg.kd.uses_teacher else run


def _latency_meter(cfg: SearchConfig, split: Split, space: SearchSpace) -> LatencyFn:
    """Latency in µs of a candidate on this machine, measured once per spec (``latency.sqlite`` in
    the cache folder, shared by the workers); a budget below the space's cheapest member is refused
    before any study is opened."""
    cache = LatencyCache(Path(cfg.cache_dir or default_cache_dir()) / "latency.sqlite")
    shape, threads = split.input_shape, cfg.latency_threads
    if cfg.budget_latency_us is not None:
        spec, _ = space.cheapest(shape, split.num_classes)
        fastest = cache.get_or_measure(spec, None, shape, threads).median_us
        if cfg.budget_latency_us < fastest:
            raise UserError(
                f"--latency-budget {format_duration(cfg.budget_latency_us)} is below the latency of space "
                f"'{space.name}''s cheapest architecture on this machine: {format_duration(fastest)} "
                f"({spec.summary()}, {threads} thread(s)). Raise --latency-budget to at least "
                f"{format_duration(fastest)}, or use a smaller --space")
    return lambda model, spec: cache.get_or_measure(spec, model, shape, threads).median_us


def identity(cfg: SearchConfig, split: Split, space: SearchSpace) -> dict:
    """What must not change when a study is resumed or shared by several workers."""
    return {
        "dataset": split.description["dataset"],
        "input_shape": list(split.input_shape),
        "num_classes": split.num_classes,
        "split": split.identity,
        "space_sha256": space.sha256,
        "budget_flops": cfg.budget_flops,
        "budget_params": cfg.budget_params,
        "train": asdict(cfg.train),
        "train_subset": cfg.train_subset,
        "min_steps": cfg.min_steps,
        "kd": asdict(cfg.kd),
        "flop_convention": FLOP_CONVENTION,
        "rungs": cfg.rungs,
        "eta": cfg.eta,
        "budget_memory": cfg.budget_memory,
        "budget_size": cfg.budget_size,
        "budget_latency_us": cfg.budget_latency_us,
        "objective": cfg.objective,
        "memory_convention": MEMORY_CONVENTION,
        "self_distill": cfg.self_distill,
    }


def _check_older_study(study: optuna.Study, cfg: SearchConfig) -> None:
    """A study recorded before rungs trained every candidate to one length: it resumes only so."""
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is not None and "rungs" not in recorded and cfg.rungs != 1:
        raise UserError(f"study {cfg.name!r} trained every candidate to one length: resume it with --rungs 1 "
                        "and its original settings, or pass a new --study-name")
    if recorded is not None and "self_distill" not in recorded and cfg.self_distill:
        raise UserError(f"study {cfg.name!r} was made before --self-distill and trained its candidates without "
                        "exits: pass a new --study-name")
    new_budgets = cfg.budget_memory or cfg.budget_size or cfg.uses_latency
    if recorded is not None and "objective" not in recorded and new_budgets:
        raise UserError(f"study {cfg.name!r} was made before memory and latency were counted, so its trials "
                        "cannot be checked against --memory-budget, --size-budget, --latency-budget or "
                        "--objective latency: pass a new --study-name")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: {err}") from None


def _check_budget(cfg: SearchConfig, space: SearchSpace, split: Split) -> None:
    """Refuse at once a budget that not even the space's cheapest architecture fits."""
    spec, min_flops = space.cheapest(split.input_shape, split.num_classes)
    # the default space keeps the input's full resolution in its stem; its predecessor does not
    smaller = " (e.g. --space default-v2, whose stems may stride 2)" if cfg.space == "default" else ""
    if cfg.budget_flops < min_flops:
        raise UserError(
            f"budget {format_quantity(cfg.budget_flops)} FLOPs is below the cheapest architecture of "
            f"space '{space.name}' at input {tuple(split.input_shape)}: {format_quantity(min_flops)} FLOPs "
            f"({spec.summary()}). Raise --budget to at least {min_flops} or use a smaller --space{smaller}"
        )
    for budget, what, flag in ((cfg.budget_memory, "peak_memory", "--memory-budget"),
                               (cfg.budget_size, "model_size", "--size-budget")):
        if budget is not None:
            least, need = space.cheapest(split.input_shape, split.num_classes,
                                         lambda s, what=what: getattr(count_footprint(s, split.input_shape), what))
            if budget < need:
                raise UserError(
                    f"{flag} {format_bytes(budget)} is below the smallest int8 {what.replace('_', ' ')} of space "
                    f"'{space.name}' at input {tuple(split.input_shape)}: {format_bytes(need)} ({least.summary()}). "
                    f"Raise {flag} to at least {need} bytes or use a smaller --space{smaller}"
                )
    if cfg.budget_params is not None:
        params = count_cost(build_student(spec), split.input_shape).params
        if cfg.budget_params < params:
            raise UserError(
                f"parameter budget {format_quantity(cfg.budget_params)} is below the cheapest "
                f"architecture of space '{space.name}': {params} parameters ({spec.summary()})"
            )


def _prepare_studies_dir(cfg: SearchConfig) -> None:
    """Make the study's folder and prove it writable before any trial trains."""
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        probe = cfg.out_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"cannot write to studies folder {cfg.studies_dir} ({err.strerror or err}); "
            "choose another with --studies-dir"
        ) from None


def _record_settings(study: optuna.Study, cfg: SearchConfig, split: Split, space: SearchSpace,
                     effective: SearchConfig) -> None:
    """The settings of the run that created the study, kept as they were: a resumed run with
    another --trials or --timeout must not replace them. The flags show ``effective`` values."""
    study.set_user_attr(SETTINGS_ATTR, {
        "config": {**cfg.to_dict(), "storage": redact_url(cfg.storage_url)},
        "flags": recorded_flags(effective),
        "data": split.description, "space": {"name": space.name, "source": space.source},
        "flop_convention": FLOP_CONVENTION,
    })


def _effective(cfg: SearchConfig, val_size: float, device: torch.device) -> SearchConfig:
    """``cfg`` with the values its defaults stood for: validation size, device, default teacher."""
    cfg = replace(cfg, val_size=val_size, device=str(device))
    if cfg.kd.uses_teacher and not cfg.teachers:
        teachers, weights = default_teacher(cfg.dataset)
        cfg = replace(cfg, teachers=teachers, teacher_weights=weights)
    return cfg


def _enqueue_warm_start(study: optuna.Study, space: SearchSpace, split: Split, progress: Progress) -> None:
    """A new study tries the space's hand designs first: the front starts from known-good students
    (one over the budget is skipped at no cost, like any other candidate)."""
    for name, line in space.warm_start:
        spec = parse_summary(line, split.input_shape[0], split.num_classes)
        study.enqueue_trial(space.params_for(spec), user_attrs={Attr.WARM_START: name})
    if space.warm_start:
        progress.log(f"warm start: {len(space.warm_start)} hand design(s) first "
                     f"({', '.join(n for n, _ in space.warm_start)})")


def _requeue_stopped(study: optuna.Study, progress: Progress) -> None:
    """A resumed study trains again the hand designs whose worker stopped under them (see requeue)."""
    names = requeue_stopped_designs(study)
    if names:
        progress.log(f"warm start: {', '.join(names)} queued again (the run training it was stopped)")


def _with_teacher(run: Run, idx: torch.Tensor, progress: Progress) -> Run:
    """``run`` with the teacher's logits on the training subset, and the teacher itself when it
    exposes the intermediate features that feature losses need."""
    cfg, split, study = run.cfg, run.split, run.study
    teacher = load_teacher(split, cfg.teachers, cfg.teacher_weights, seed=cfg.teacher_seed,
                           cache_dir=cfg.cache_dir, progress=progress, device=run.device,
                           weight_files=cfg.teacher_files, teacher_input=cfg.teacher_input)
    info = teacher.info.study_record()
    # A worker with another teacher (other cache, other weights) is refused here.
    check_identity(study, {"teacher": {k: info[k] for k in ("key", "sha256")}})
    study.set_user_attr(TEACHER_ATTR, info)
    logits = teacher_logits(teacher, split, cache_dir=cfg.cache_dir)[idx]
    has_features = hasattr(teacher.model, "forward_features")
    if needs_features(cfg.kd.loss) and not has_features:
        raise UserError(f"--kd {cfg.kd.loss} needs the teacher's intermediate features, which an ONNX or "
                        "TorchScript teacher does not expose: use a logit loss (hinton, logit-l2), or "
                        "--teacher pkg.module:factory whose model defines forward_features(x)")
    losses = tuple(n for n in kd_loss_names() if has_features or not needs_features(n))
    module = teacher.model.to(run.device).eval() if has_features else None
    return replace(run, teacher_logits=logits, teacher=module, kd_losses=losses)
