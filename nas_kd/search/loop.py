"""The per-trial path of a search, kept lean: sample → count (ms) → reject, or train → evaluate → record.

Everything that does not depend on the candidate (data tensors, teacher logits) is prepared once
per process in ``prepare``; ``run_trials`` then asks the study for candidates until this process
has trained its share.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace

import optuna
import torch

from nas_kd import interrupts
from nas_kd.data import Split, default_val_size, load_dataset, split_dataset
from nas_kd.distill.losses import KDSettings, kd_loss_names, needs_features, suggest_kd
from nas_kd.errors import TrialFailed, UserError
from nas_kd.model.builder import build_student
from nas_kd.model.cost import FLOP_CONVENTION, Cost, analytic_flops, count_cost, count_params
from nas_kd.model.spec import ArchSpec, parse_summary
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.search.config import SearchConfig
from nas_kd.search.space import SearchSpace, load_space
from nas_kd.study.storage import ask_trial, check_identity, make_sampler, open_study, redact_url
from nas_kd.teacher import check_teacher_sources, load_teacher, teacher_logits
from nas_kd.train.loop import TrainSettings, accuracy, train_model

MAX_SKIPS_PER_TRIAL = 200  # over-budget samples tolerated per wanted trial before giving up
MAX_UNEXPECTED_FAILURES = 3  # consecutive trial crashes of unknown cause before stopping
WORKER_SEED_STRIDE = 7919  # workers draw from different sampler streams
EARLY_STOP_PROBE = 1000  # validation images scored half-way through each trial (early stopping)
EARLY_STOP_MIN_GAINS = 5  # half-way → final gains observed before the rule may stop anything
EARLY_STOP_QUANTILE = 0.9  # a candidate is stopped only if even this large a gain leaves it dominated


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: {err}") from None


def _prepare_studies_dir(cfg: SearchConfig) -> None:
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
    }


def prepare(cfg: SearchConfig, progress: Progress) -> Run:
    """Check every input, open (or resume) the study, and get the teacher's logits ready."""
    device = _device(cfg.device)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    val_size = cfg.val_size if cfg.val_size is not None else default_val_size(len(data.y_train))
    split = split_dataset(data, val_size=val_size, seed=cfg.split_seed)
    space = load_space(cfg.space)
    _check_budget(cfg, space, split)
    if cfg.kd.uses_teacher:
        check_teacher_sources(cfg.dataset, cfg.teachers, cfg.teacher_weights, cfg.teacher_files)
    _prepare_studies_dir(cfg)
    study = open_study(cfg.name, cfg.storage_url)
    check_identity(study, _identity(cfg, split, space))
    if cfg.worker_index is None:
        study.set_user_attr("nas_kd.settings", {
            "config": {**cfg.to_dict(), "storage": redact_url(cfg.storage_url)},
            "data": split.description, "space": {"name": space.name, "source": space.source},
            "flop_convention": FLOP_CONVENTION,
        })
    if cfg.worker_index is None and not study.trials and cfg.warm_start:
        _enqueue_warm_start(study, space, split, progress)
    idx = split.subset_index(cfg.train_subset, cfg.split_seed)
    logits = None
    if cfg.kd.uses_teacher:
        teacher = load_teacher(split, cfg.teachers, cfg.teacher_weights, seed=cfg.teacher_seed,
                               cache_dir=cfg.cache_dir, progress=progress, device=device,
                               weight_files=cfg.teacher_files, teacher_input=cfg.teacher_input)
        keep = ("key", "sha256", "val_accuracy", "test_accuracy", "arch", "flops", "params")
        info = {k: teacher.info[k] for k in keep}
        # A worker with another teacher (other cache, other weights) is refused here.
        check_identity(study, {"teacher": {k: info[k] for k in ("key", "sha256")}})
        study.set_user_attr("nas_kd.teacher", info)
        logits = teacher_logits(teacher, split, cache_dir=cfg.cache_dir)[idx]
        has_features = hasattr(teacher.model, "forward_features")
        if needs_features(cfg.kd.loss) and not has_features:
            raise UserError(f"--kd {cfg.kd.loss} needs the teacher's intermediate features, which an ONNX or "
                            "TorchScript teacher does not expose: use a logit loss (hinton, logit-l2), or "
                            "--teacher pkg.module:factory whose model defines forward_features(x)")
        losses = tuple(n for n in kd_loss_names() if has_features or not needs_features(n))
        return Run(cfg, split, space, study, split.x_train[idx], split.y_train[idx], logits, device,
                   teacher.model.to(device).eval() if has_features else None, losses)
    return Run(cfg, split, space, study, split.x_train[idx], split.y_train[idx], logits, device)


def _enqueue_warm_start(study: optuna.Study, space: SearchSpace, split: Split, progress: Progress) -> None:
    """A new study tries the space's hand designs first: the front starts from known-good students
    (one over the budget is skipped at no cost, like any other candidate)."""
    for name, line in space.warm_start:
        spec = parse_summary(line, split.input_shape[0], split.num_classes)
        study.enqueue_trial(space.params_for(spec), user_attrs={"warm_start": name})
    if space.warm_start:
        progress.log(f"warm start: {len(space.warm_start)} hand design(s) first "
                     f"({', '.join(n for n, _ in space.warm_start)})")


class _Heartbeat:
    """Records the trial's heartbeat in a background thread while it trains (ask/tell gets none)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        storage = study._storage  # noqa: SLF001 - Optuna exposes no public handle for ask/tell heartbeats
        self._enabled = _heartbeat_enabled(storage)
        self._storage, self._trial_id = storage, trial._trial_id  # noqa: SLF001
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill training
                pass

    def __enter__(self) -> _Heartbeat:
        if self._enabled:
            self._storage.record_heartbeat(self._trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _heartbeat_enabled(storage: object) -> bool:
    # RDB storages come wrapped in Optuna's cache layer, which forwards the heartbeat methods.
    return hasattr(storage, "record_heartbeat") and bool(storage.get_heartbeat_interval())


def _fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats (killed, crashed, lost its machine)."""
    optuna.storages.fail_stale_trials(study)  # a no-op on storages without heartbeats


def run_trials(run: Run, progress: Progress) -> dict:
    """Ask for candidates until ``cfg.trials`` are trained (or time runs out); return counts.

    Ctrl-C fails the running trial and raises KeyboardInterrupt; it is raised at our own checks
    (each training step, between a trial's stages), never inside library code (see interrupts)."""
    with interrupts.deferred():
        return _run_trials(run, progress)


def _run_trials(run: Run, progress: Progress) -> dict:
    cfg, study, split = run.cfg, run.study, run.split
    shape, budget = split.input_shape, cfg.budget_flops
    _fail_stale(study)
    n_before = len(study.trials)
    # resumed runs (and each worker) draw new samples instead of repeating the first run's
    study.sampler = make_sampler(cfg.sampler, cfg.seed + n_before + WORKER_SEED_STRIDE * (cfg.worker_index or 0))
    known = {  # architecture (and, under --kd search, recipe) → its trained trial
        t.user_attrs["spec_json"] + json.dumps(t.user_attrs.get("kd")): t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "trained" and "spec_json" in t.user_attrs
    }
    stats = {"trained": 0, "skipped": 0, "duplicates": 0, "failed": 0, "stopped": 0, "train_seconds": 0.0}
    gains = [t.values[0] - t.user_attrs["mid_val"] for t in known.values() if "mid_val" in t.user_attrs]
    best = max((t.values[0] for t in known.values()), default=None)
    unexpected = 0
    start = time.perf_counter()

    def status(extra: str = "") -> str:
        best_text = f"{best:.2%}" if best is not None else "-"
        return (f"trial {min(stats['trained'] + 1, cfg.trials)}/{cfg.trials} | "
                f"{format_seconds(time.perf_counter() - start)} | best val {best_text} | "
                f"skipped {stats['skipped']} over budget" + (f" | {extra}" if extra else ""))

    while stats["trained"] < cfg.trials:
        if cfg.timeout is not None and time.perf_counter() - start > cfg.timeout:
            progress.log(f"timeout of {cfg.timeout:g} s reached after {stats['trained']} trained trials")
            break
        if stats["skipped"] > MAX_SKIPS_PER_TRIAL * cfg.trials:
            raise UserError(
                f"gave up after {stats['skipped']} candidates over budget: the space rarely fits "
                f"{format_quantity(budget)} FLOPs; raise --budget or use a smaller --space"
            )
        interrupts.check()
        _fail_stale(study)  # one query: a killed peer's trial is failed within the grace period
        trial = ask_trial(study, cfg.storage_url)
        try:  # Ctrl-C anywhere in a trial (sampling, counting, training) fails that trial
            spec = run.space.sample(trial, shape, split.num_classes)
            torch.manual_seed(cfg.seed)
            model = build_student(spec)
            cost = _screen_cost(model, spec, shape, budget)
            interrupts.check()
            spec_json = spec.to_json()
            for key, value in (("spec", spec.to_dict()), ("spec_json", spec_json), ("summary", spec.summary()),
                               ("flops", cost.flops), ("params", cost.params)):
                trial.set_user_attr(key, value)
            if cfg.worker_index is not None:
                trial.set_user_attr("worker", cfg.worker_index)
            trial.set_constraint("flops", cost.flops - budget)
            if cfg.budget_params is not None:
                trial.set_constraint("params", cost.params - cfg.budget_params)
            if cost.flops > budget or (cfg.budget_params is not None and cost.params > cfg.budget_params):
                trial.set_user_attr("status", "infeasible")
                study.tell(trial, [0.0, float(cost.flops)])
                stats["skipped"] += 1
                progress.status(status())
                continue
            kd = suggest_kd(trial, list(run.kd_losses)) if cfg.kd.searched else cfg.kd
            if cfg.kd.searched:
                trial.set_user_attr("kd", asdict(kd))
            key = spec_json + json.dumps(asdict(kd) if cfg.kd.searched else None)
            if key in known:  # the same architecture (and recipe) under the same seed trains identically
                earlier = known[key]
                trial.set_user_attr("val_accuracy", earlier.user_attrs.get("val_accuracy"))
                trial.set_user_attr("status", "duplicate")
                trial.set_user_attr("duplicate_of", earlier.number)
                study.tell(trial, [earlier.values[0], float(cost.flops)])
                stats["duplicates"] += 1
                continue

            progress.status(status(f"#{trial.number} training {format_quantity(cost.flops)} FLOPs"), force=True)
            try:
                with _Heartbeat(study, trial):
                    bar = _stop_below(known.values(), cost.flops, gains) if cfg.early_stop else None
                    val_acc, seconds, mid = _train_candidate(run, model, kd, trial.number,
                                                             lambda text: progress.status(status(text)), bar)
                _save_weights(cfg, trial.number, model)
            except _StoppedEarly as stop:
                trial.set_user_attr("status", "stopped early")
                trial.set_user_attr("mid_val", stop.accuracy)
                trial.set_user_attr("stop_reason", stop.reason)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                stats["trained"] += 1
                stats["stopped"] += 1
                progress.log(f"#{trial.number:<4d} stopped half-way: {stop.reason}")
                continue
            except (TrialFailed, torch.OutOfMemoryError, MemoryError) as err:
                _fail(study, trial, f"{type(err).__name__}: {err}", progress)
                stats["trained"] += 1
                stats["failed"] += 1
                continue
            except (UserError, OSError) as err:  # the machine, not the candidate: stop the run, keep the study
                _fail(study, trial, f"{type(err).__name__}: {err}", progress)
                raise
            except Exception as err:  # noqa: BLE001 - a bug must not lose the study; stop after a few
                unexpected += 1
                log = cfg.out_dir / "errors.log"
                with open(log, "a") as f:
                    f.write(f"--- trial {trial.number} spec {spec_json}\n{traceback.format_exc()}\n")
                _fail(study, trial, f"{type(err).__name__}: {err} (traceback in {log})", progress)
                if unexpected >= MAX_UNEXPECTED_FAILURES:
                    raise RuntimeError(f"{unexpected} trials in a row crashed; see {log}") from err
                stats["trained"] += 1
                stats["failed"] += 1
                continue
            unexpected = 0
            trial.set_user_attr("status", "trained")
            trial.set_user_attr("val_accuracy", val_acc)
            trial.set_user_attr("train_seconds", round(seconds, 3))
            if mid is not None:
                trial.set_user_attr("mid_val", mid)
                gains.append(val_acc - mid)
            known[key] = study.tell(trial, [val_acc, float(cost.flops)])
            stats["trained"] += 1
            stats["train_seconds"] += seconds
            best = val_acc if best is None else max(best, val_acc)
            progress.log(
                f"#{trial.number:<4d} [{stats['trained']}/{cfg.trials}] val {val_acc:6.2%} | "
                f"{format_quantity(cost.flops):>6s} FLOPs | {format_quantity(cost.params):>6s} params | "
                f"{seconds:5.1f} s | {spec.summary()}"
                + (f" | {kd.loss} T={kd.temperature:g} alpha={kd.alpha:.2f}" if cfg.kd.searched else "")
            )
        except KeyboardInterrupt:
            _fail_unless_told(study, trial, "interrupted by the user", progress)
            raise
    stats["seconds"] = time.perf_counter() - start
    return stats


def _screen_cost(model: torch.nn.Module, spec: ArchSpec, shape: tuple[int, int, int], budget: int) -> Cost:
    """The candidate's cost, cheaply when it is over budget: the analytic count (microseconds,
    equal to fvcore's on every spec tested) rejects it; fvcore (~0.5 s) counts those that train."""
    flops = analytic_flops(spec, shape)
    if flops > budget:
        return Cost(flops=flops, params=count_params(model))
    return count_cost(model, shape)


def trial_settings(cfg: SearchConfig, n_images: int) -> TrainSettings:
    """``cfg.train``, with more epochs when ``--epochs`` would give fewer than ``cfg.min_steps`` steps
    (2 epochs of a 1,000-image dataset are 15 steps: too few to rank anything)."""
    steps_per_epoch = max(1, n_images // cfg.train.batch_size)
    epochs = max(cfg.train.epochs, cfg.min_steps / steps_per_epoch)
    return replace(cfg.train, epochs=epochs)


class _StoppedEarly(Exception):
    def __init__(self, accuracy: float, reason: str) -> None:
        super().__init__(reason)
        self.accuracy, self.reason = accuracy, reason


def _stop_below(known: object, flops: int, gains: list[float]) -> tuple[float, str] | None:
    """Early stopping: the half-way accuracy under which a candidate cannot reach the front.

    A trained candidate at most as costly with final accuracy ``best`` dominates this one unless it
    gains more than ``best − half-way accuracy`` in its second half. The gain to allow is this
    study's own: the 90th percentile of the gains its trials made, once 5 are known. Until then,
    and when nothing cheaper is trained, no candidate is stopped.
    """
    if len(gains) < EARLY_STOP_MIN_GAINS:
        return None
    cheaper = [t for t in known if t.values[1] <= flops and t.user_attrs.get("status") == "trained"]
    if not cheaper:
        return None
    best = max(cheaper, key=lambda t: t.values[0])
    margin = sorted(gains)[min(len(gains) - 1, int(EARLY_STOP_QUANTILE * len(gains)))]
    return best.values[0] - margin, (f"half-way accuracy {{:.2%}} + {margin:.2%} (a 90th-percentile second-half "
                                     f"gain) is below trial #{best.number}'s {best.values[0]:.2%} at "
                                     f"{format_quantity(best.values[1])} FLOPs")


def _train_candidate(run: Run, model: torch.nn.Module, kd: KDSettings, number: int, show,  # noqa: ANN001
                     stop_below: tuple[float, str] | None = None) -> tuple[float, float, float | None]:
    """Train one candidate on the run's fixed subset and score it on validation (KD from cached
    logits; feature losses also run the teacher on each batch). With early stopping it is also
    scored half-way on ``EARLY_STOP_PROBE`` validation images, and stopped there if that score is
    under ``stop_below``. Returns validation accuracy, training seconds, half-way accuracy."""
    model = model.to(run.device).to(memory_format=torch.channels_last)
    mid: list[float] = []

    def on_step(step: int, total: int, _loss: float) -> None:
        show(f"#{number} training {step / total:.0%}")
        if run.cfg.early_stop and step == total // 2 and step > 0:
            mid.append(accuracy(model, run.split.x_val[:EARLY_STOP_PROBE], run.split.y_val[:EARLY_STOP_PROBE]))
            model.train()
            if stop_below is not None and mid[0] < stop_below[0]:
                raise _StoppedEarly(mid[0], stop_below[1].format(mid[0]))

    result = train_model(model, run.x_train, run.y_train, trial_settings(run.cfg, len(run.y_train)), kd=kd,
                         teacher_logits=run.teacher_logits,
                         teacher=run.teacher if needs_features(kd.loss) else None, on_step=on_step)
    return accuracy(model, run.split.x_val, run.split.y_val), result.seconds, (mid[0] if mid else None)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, progress: Progress) -> None:
    trial.set_user_attr("status", "failed")
    trial.set_user_attr("fail_reason", reason[:1000])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    progress.log(f"#{trial.number:<4d} failed: {reason}")


def _fail_unless_told(study: optuna.Study, trial: optuna.Trial, reason: str, progress: Progress) -> None:
    try:
        _fail(study, trial, reason, progress)
    except optuna.exceptions.UpdateFinishedTrialError:  # interrupted after the trial was recorded
        pass


def _save_weights(cfg: SearchConfig, number: int, model: torch.nn.Module) -> None:
    folder = cfg.out_dir / "trials"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{number}.pt.tmp"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(folder / f"{number}.pt")
