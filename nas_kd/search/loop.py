"""The trial loop: ask the study for a candidate, sample it, count its cost, then reject it (over
budget), reuse an earlier result (a repeat) or train it, and tell the study; until this process
has trained its share of ``--trials``. Each outcome has one method of ``_Loop``.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch

from nas_kd import interrupts
from nas_kd.distill import KDSettings, suggest_kd
from nas_kd.errors import TrialFailed, UserError
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress, format_seconds
from nas_kd.quantity import format_quantity
from nas_kd.search.budget import CandidateCost, fits, overshoot, screen
from nas_kd.search.candidate import checkpoint_path, save_weights, train_candidate, train_promotion
from nas_kd.search.config import SearchConfig
from nas_kd.search.early_stop import StoppedEarly, observed_gains, stop_below
from nas_kd.search.heartbeat import Heartbeat, fail_stale
from nas_kd.search.prepare import Run
from nas_kd.search.promote import (
    Claim,
    claim_trial,
    fail_claim,
    open_rungs,
    promoted,
    record_rung,
    rung_results,
    try_claim,
)
from nas_kd.search.rungs import RungResult, promotable
from nas_kd.search.sampler import band_proposals, flop_bands, local_proposals, make_sampler, rung_scores
from nas_kd.study.records import INTERRUPTED_REASON, Attr, Status, is_feasible, is_trained
from nas_kd.study.storage import ask_trial, file_lock

MAX_SKIPS_PER_TRIAL = 200  # over-budget samples tolerated per wanted trial before giving up
RUN_POLL_SECONDS = 2.0  # how often a worker with no candidate left looks for a promotion due
MAX_UNEXPECTED_FAILURES = 3  # consecutive trial crashes of unknown cause before stopping
WORKER_SEED_STRIDE = 7919  # workers draw from different sampler streams
PROMOTION_TIME_MARGIN = 1.25  # a promotion past the quota starts only if 1.25× its expected time fits

_TrialState = optuna.trial.TrialState


@dataclass
class TrialCounts:
    """What one process's loop did."""

    trained: int = 0  # trials that took one of the ``--trials`` slots: trained, stopped half-way or failed
    skipped: int = 0  # over budget, rejected untrained
    duplicates: int = 0  # repeats of a trained architecture (and recipe), its result reused
    failed: int = 0
    stopped: int = 0  # stopped half-way by early stopping
    promoted: int = 0  # promotions trained to a longer rung
    train_seconds: float = 0.0
    seconds: float = 0.0  # the loop's wall time


def run_trials(run: Run, progress: Progress) -> TrialCounts:
    """Ask for candidates until ``cfg.trials`` are trained (or time runs out); return the counts.

    Ctrl-C fails the running trial and raises KeyboardInterrupt; it is raised at our own checks
    (each training step, between a trial's stages), never inside library code (see interrupts)."""
    with interrupts.deferred():
        return _Loop(run, progress).until_done()


class _Loop:
    def __init__(self, run: Run, progress: Progress) -> None:
        self.run, self.progress = run, progress
        self.cfg: SearchConfig = run.cfg
        self.study: optuna.Study = run.study
        fail_stale(self.study)
        # resumed runs (and each worker) draw new samples instead of repeating the first run's
        offset = len(self.study.trials) + WORKER_SEED_STRIDE * (self.cfg.worker_index or 0)
        self.known = {  # architecture (and, under --kd search, recipe) -> its trained trial
            _key(t.user_attrs[Attr.SPEC_JSON], t.user_attrs.get(Attr.KD)): t
            for t in self.study.get_trials(deepcopy=False, states=(_TrialState.COMPLETE,))
            if is_trained(t) and Attr.SPEC_JSON in t.user_attrs
        }
        self.gains = observed_gains(self.known.values())
        self.best = max((t.values[0] for t in self.known.values()), default=None)
        self.counts = TrialCounts()
        self.unexpected = 0  # trials in a row that crashed for an unknown reason
        self.tail_announced = False  # the log says once that promotions go past the quota
        self.rungs = open_rungs(self.cfg.name, self.cfg.storage_url) if self.cfg.rungs > 1 else None
        scores = ((lambda: rung_scores(rung_results(self.study, self.rungs)))
                  if self.rungs is not None and self.cfg.sampler == "tpe-rungs" else None)
        self.study.sampler = make_sampler(self.cfg.sampler, self.cfg.seed, scores, offset, self._proposals())
        self.start = time.perf_counter()

    def _proposals(self) -> Callable[[int], dict[str, Any] | None] | None:
        """What ``stratified`` proposes for each trial number: a member of its FLOP band; under ``local``,
        the top band's extra turns change one knob of one of its best candidates."""
        if self.cfg.sampler not in ("stratified", "local"):
            return None
        space, shape, classes = self.run.space, self.run.split.input_shape, self.run.split.num_classes
        _, cheapest = space.cheapest(shape, classes)
        bands = flop_bands(cheapest, self.cfg.budget_flops)
        propose = band_proposals(lambda rng, band: space.draw(rng, shape, classes, band), bands, self.cfg.seed)
        if self.cfg.sampler == "stratified":
            return propose
        return local_proposals(
            propose, lambda rng, params: space.mutate(rng, params, shape, classes, bands[-1], self._tried()),
            lambda: self._ranked(bands[-1][0]), len(bands), self.cfg.seed)

    def _tried(self) -> frozenset[str]:
        """The architectures (as JSON) of every candidate this study has asked for."""
        return frozenset(t.user_attrs[Attr.SPEC_JSON] for t in self.study.get_trials(deepcopy=False)
                         if Attr.SPEC_JSON in t.user_attrs)

    def _ranked(self, above: float) -> list[dict[str, Any]]:
        """The parameters of the scored candidates over ``above`` FLOPs, best first: by their longest
        rung put on rung 0's scale (``rung_scores``), or by their accuracy without rungs."""
        trials = self.study.get_trials(deepcopy=False, states=(_TrialState.COMPLETE,))
        scores = (rung_scores(rung_results(self.study, self.rungs)) if self.rungs is not None
                  else {t.number: t.values[0] for t in trials if is_trained(t) and is_feasible(t)})
        top = [t for t in trials if t.number in scores and t.user_attrs.get(Attr.FLOPS, 0) > above]
        return [t.params for t in sorted(top, key=lambda t: -scores[t.number])]

    def until_done(self) -> TrialCounts:
        """New candidates until this process trained its share, promotions first whenever one is due
        (and those still due after the last candidate)."""
        cfg = self.cfg
        while True:
            if cfg.timeout is not None and time.perf_counter() - self.run.started > cfg.timeout:
                self.progress.log(f"timeout of {cfg.timeout:g} s reached after {self.counts.trained} trained trials")
                break
            interrupts.check()
            # once every candidate is trained or in training, each promotion, due or past the quota, must
            # end before --promote-until (a past-quota promotion to rung 1 can make one due at rung 2)
            tail = bool(cfg.promote_until) and self._candidates_done()
            if self._promotion(past_quota=tail):
                continue
            if self.cfg.run_id is None and self.counts.trained >= cfg.trials:
                break
            if self.counts.skipped > MAX_SKIPS_PER_TRIAL * cfg.trials:
                raise UserError(
                    f"gave up after {self.counts.skipped} candidates over budget: the space rarely fits "
                    f"{format_quantity(cfg.budget_flops)} FLOPs; raise --budget or use a smaller --space"
                )
            interrupts.check()
            fail_stale(self.study)  # one query: a killed peer's trial is failed within the grace period
            trial = ask_trial(self.study, cfg.storage_url) if cfg.run_id is None else self._ask_in_run()
            if trial is None:  # the run has all its candidates: wait for promotions while peers train
                if not self._run_busy():
                    break
                time.sleep(RUN_POLL_SECONDS)
                continue
            try:  # Ctrl-C anywhere in a trial (sampling, counting, training) fails that trial
                # beating from the ask on: a worker killed while it counts must not leave the trial running
                with Heartbeat(self.study, trial):
                    self._one(trial)
            except KeyboardInterrupt:
                _fail_unless_told(self.study, trial, INTERRUPTED_REASON, self.progress)
                raise
        self.counts.seconds = time.perf_counter() - self.start
        return self.counts

    def _candidates_done(self) -> bool:
        """Every candidate of this process (or of its run of workers) is trained or in training."""
        if self.cfg.run_id is None:
            return self.counts.trained >= self.cfg.trials
        return run_slots_taken(self.study, self.cfg.run_id) >= (self.cfg.run_trials or self.cfg.trials)

    def _ask_in_run(self) -> optuna.Trial | None:
        """A new trial for this run of local workers, or None once the run's ``--trials`` are all
        trained or in training. Workers share one count, not fixed shares: promotions make workers
        uneven, and a worker with its share done would otherwise leave its core idle. The count and
        the ask happen under one file lock, so two workers never take the run's last slot twice."""
        with file_lock(self.cfg.out_dir / ".run-lock"):
            if self._candidates_done():
                return None
            trial = ask_trial(self.study, self.cfg.storage_url)
            trial.set_user_attr(Attr.RUN, self.cfg.run_id)
            return trial

    def _run_busy(self) -> bool:
        """Another worker of this run is training a candidate or a promotion (which may make more due)."""
        if self.rungs is None:
            return False
        running = (_TrialState.RUNNING,)
        return any(t.user_attrs.get(Attr.RUN) == self.cfg.run_id
                   for study in (self.study, self.rungs) for t in study.get_trials(deepcopy=False, states=running))

    def _one(self, trial: optuna.Trial) -> None:
        """Sample -> count -> reject, reuse or train."""
        cfg, split = self.cfg, self.run.split
        spec = self.run.space.sample(trial, split.input_shape, split.num_classes)
        # The recipe is drawn with the architecture, even for a candidate about to be rejected: under
        # a tight budget most early trials are, and a sampler that never saw the recipe drawn in
        # them proposes the same recipe ever after.
        kd = suggest_kd(trial, list(self.run.kd_losses)) if cfg.kd.searched else cfg.kd
        torch.manual_seed(cfg.seed)
        model = build_student(spec)
        cost = screen(model, spec, split.input_shape, cfg, self.run.latency)
        interrupts.check()
        _record_candidate(trial, spec, cost, cfg)
        if not fits(cost, cfg):
            self._reject(trial, cost)
            return
        if cfg.kd.searched:
            trial.set_user_attr(Attr.KD, asdict(kd))
        key = _key(spec.to_json(), asdict(kd) if cfg.kd.searched else None)
        if key in self.known:  # the same architecture (and recipe) under the same seed trains identically
            self._reuse(trial, cost, self.known[key])
        else:
            self._train(trial, spec, model, cost, kd, key)

    def _reject(self, trial: optuna.Trial, cost: CandidateCost) -> None:
        trial.set_user_attr(Attr.STATUS, Status.INFEASIBLE)
        self.study.tell(trial, [0.0, cost.objective(self.cfg)])
        self.counts.skipped += 1
        self.progress.status(self._status())

    def _reuse(self, trial: optuna.Trial, cost: CandidateCost, earlier: optuna.trial.FrozenTrial) -> None:
        trial.set_user_attr(Attr.VAL_ACCURACY, earlier.user_attrs.get(Attr.VAL_ACCURACY))
        trial.set_user_attr(Attr.STATUS, Status.DUPLICATE)
        trial.set_user_attr(Attr.DUPLICATE_OF, earlier.number)
        self.study.tell(trial, [earlier.values[0], cost.objective(self.cfg)])
        self.counts.duplicates += 1

    def _train(self, trial: optuna.Trial, spec: ArchSpec, model: torch.nn.Module, cost: CandidateCost,
               kd: KDSettings, key: str) -> None:
        n = trial.number
        self.progress.status(self._status(f"#{n} training {format_quantity(cost.flops)} FLOPs"), force=True)
        try:
            unit = "µs" if self.cfg.objective == "latency" else "FLOPs"
            bar = (stop_below(self.known.values(), cost.objective(self.cfg), self.gains, unit)
                   if self.cfg.stops_early else None)
            outcome = train_candidate(self.run, model, kd,
                                      lambda text: self.progress.status(self._status(f"#{n} {text}")), bar,
                                      number=n)
            save_weights(self.cfg, n, model)
        except StoppedEarly as stop:
            self._stopped(trial, stop)
        except (TrialFailed, torch.OutOfMemoryError, MemoryError) as err:
            self._failed(trial, f"{type(err).__name__}: {err}")
        except (UserError, OSError) as err:  # the machine, not the candidate: stop the run, keep the study
            _fail(self.study, trial, f"{type(err).__name__}: {err}", self.progress)
            raise
        except Exception as err:  # noqa: BLE001 - a bug must not lose the study; stop after a few
            self._crashed(trial, spec, err)
        else:
            self._trained(trial, spec, cost, kd, key, outcome)

    def _trained(self, trial: optuna.Trial, spec: ArchSpec, cost: CandidateCost, kd: KDSettings, key: str,
                 outcome: tuple[float, float, float | None]) -> None:
        val_acc, seconds, mid = outcome
        self.unexpected = 0
        trial.set_user_attr(Attr.STATUS, Status.TRAINED)
        trial.set_user_attr(Attr.VAL_ACCURACY, val_acc)
        trial.set_user_attr(Attr.TRAIN_SECONDS, round(seconds, 3))
        if mid is not None:
            trial.set_user_attr(Attr.MID_VAL, mid)
            self.gains.append(val_acc - mid)
        self.known[key] = self.study.tell(trial, [val_acc, cost.objective(self.cfg)])
        self.counts.trained += 1
        self.counts.train_seconds += seconds
        self.best = val_acc if self.best is None else max(self.best, val_acc)
        self.progress.log(
            f"#{trial.number:<4d} [{self.counts.trained}/{self.cfg.trials}] val {val_acc:6.2%} | "
            f"{format_quantity(cost.flops):>6s} FLOPs | {format_quantity(cost.params):>6s} params | "
            f"{seconds:5.1f} s | {spec.summary()}"
            + (f" | {kd.loss} T={kd.temperature:g} alpha={kd.alpha:.2f}" if self.cfg.kd.searched else "")
        )

    def _promotion(self, past_quota: bool = False) -> bool:
        """Train the next promotion due, if any this worker can claim (and holds the checkpoint of).
        ``past_quota``: every candidate is trained, so any result may go up whose promotion is
        expected to end before ``--promote-until`` (and only those)."""
        if self.rungs is None:
            return False
        fail_stale(self.rungs)
        due = promotable(rung_results(self.study, self.rungs), promoted=promoted(self.rungs),
                         top_rung=self.cfg.rungs - 1, eta=self.cfg.eta, top=self.cfg.cost_budget,
                         past_quota=past_quota, tail=self.cfg.tail)
        if past_quota:
            trials = self.study.get_trials(deepcopy=False)
            due = [r for r in due if self._ends_in_time(r, trials[r.candidate].user_attrs.get(Attr.TRAIN_SECONDS))]
        for result in due:
            if checkpoint_path(self.cfg, result.candidate).exists():
                claim = try_claim(self.rungs, result, run_id=self.cfg.run_id)
                if claim is not None:
                    if past_quota and not self.tail_announced:
                        self.tail_announced = True
                        self.progress.log(f"every candidate trained: promoting past each rung's 1/{self.cfg.eta} "
                                          f"share while a promotion ends within {self.cfg.promote_until:g} s")
                    self._promote(claim, result.accuracy)
                    return True
        return False

    def _ends_in_time(self, result: RungResult, rung0: float | None) -> bool:
        """Would promoting ``result`` end before ``--promote-until``? Its next rung trains
        ``eta**(r+1) - eta**r`` times rung 0's steps, each as fast as in its rung 0 (``rung0`` seconds)."""
        if rung0 is None:
            return False
        eta, r = self.cfg.eta, result.rung
        expected = PROMOTION_TIME_MARGIN * rung0 * (eta ** (r + 1) - eta**r)
        return time.perf_counter() - self.run.started + expected <= self.cfg.promote_until

    def _promote(self, claim: Claim, before: float) -> None:
        """Resume the candidate from its checkpoint for the claimed rung; a stop reopens the claim."""
        source = self.study.get_trials(deepcopy=False)[claim.source].user_attrs
        kd = KDSettings(**source[Attr.KD]) if Attr.KD in source else self.cfg.kd
        model = build_student(ArchSpec.from_dict(source[Attr.SPEC]))
        n, rung = claim.source, claim.rung
        self.progress.status(self._status(f"#{n} promoted to rung {rung}"), force=True)
        try:
            with Heartbeat(self.rungs, claim_trial(self.rungs, claim)):
                accuracy, seconds = train_promotion(self.run, model, kd, n, rung,
                                                    lambda text: self.progress.status(self._status(f"#{n} {text}")))
            save_weights(self.cfg, n, model)
        except KeyboardInterrupt:
            fail_claim(self.rungs, claim, "interrupted by the user", reopen=True)
            raise
        except (UserError, OSError) as err:
            fail_claim(self.rungs, claim, f"{type(err).__name__}: {err}", reopen=True)
            raise
        except Exception as err:  # noqa: BLE001 - NaN, out of memory or a bug: this promotion only
            fail_claim(self.rungs, claim, f"{type(err).__name__}: {err}", reopen=False)
            self.progress.log(f"#{n:<4d} rung {rung} failed: {type(err).__name__}: {err}")
            return
        record_rung(self.rungs, claim, accuracy, seconds)
        self.counts.promoted += 1
        self.progress.log(f"#{n:<4d} rung {rung}: val {accuracy:6.2%} (rung {rung - 1}: {before:.2%}) | "
                          f"{format_quantity(source[Attr.FLOPS]):>6s} FLOPs | {seconds:5.1f} s in all | "
                          f"{source[Attr.SUMMARY]}")

    def _stopped(self, trial: optuna.Trial, stop: StoppedEarly) -> None:
        trial.set_user_attr(Attr.STATUS, Status.STOPPED)
        trial.set_user_attr(Attr.MID_VAL, stop.accuracy)
        trial.set_user_attr(Attr.STOP_REASON, stop.reason)
        self.study.tell(trial, state=_TrialState.PRUNED)
        self.counts.trained += 1
        self.counts.stopped += 1
        self.progress.log(f"#{trial.number:<4d} stopped half-way: {stop.reason}")

    def _failed(self, trial: optuna.Trial, reason: str) -> None:
        _fail(self.study, trial, reason, self.progress)
        self.counts.trained += 1
        self.counts.failed += 1

    def _crashed(self, trial: optuna.Trial, spec: ArchSpec, err: Exception) -> None:
        """A bug, not the candidate: its traceback goes to ``errors.log``; several in a row stop the run."""
        self.unexpected += 1
        log = self.cfg.out_dir / "errors.log"
        with open(log, "a") as f:
            f.write(f"--- trial {trial.number} spec {spec.to_json()}\n{traceback.format_exc()}\n")
        self._failed(trial, f"{type(err).__name__}: {err} (traceback in {log})")
        if self.unexpected >= MAX_UNEXPECTED_FAILURES:
            raise RuntimeError(f"{self.unexpected} trials in a row crashed; see {log}") from err

    def _status(self, extra: str = "") -> str:
        best = f"{self.best:.2%}" if self.best is not None else "-"
        # the best first training, which promotions may not confirm: the front reads the longest rung
        label = "best val" if self.cfg.rungs == 1 else "best rung-0 val"
        return (f"trial {min(self.counts.trained + 1, self.cfg.trials)}/{self.cfg.trials} | "
                f"{format_seconds(time.perf_counter() - self.start)} | {label} {best} | "
                f"skipped {self.counts.skipped} over budget" + (f" | {extra}" if extra else ""))


def _key(spec_json: str, kd: dict | None) -> str:
    """What makes two trials train identically: the architecture, and the recipe when searched."""
    return spec_json + json.dumps(kd)


def _record_candidate(trial: optuna.Trial, spec: ArchSpec, cost: CandidateCost, cfg: SearchConfig) -> None:
    """The candidate and its costs on the trial; its budget overshoots as the sampler's constraints."""
    for key, value in ((Attr.SPEC, spec.to_dict()), (Attr.SPEC_JSON, spec.to_json()),
                       (Attr.SUMMARY, spec.summary()), (Attr.FLOPS, cost.flops), (Attr.PARAMS, cost.params),
                       (Attr.PEAK_MEMORY, cost.peak_memory), (Attr.MODEL_SIZE, cost.model_size),
                       (Attr.LATENCY, cost.latency_us)):
        if value is not None:
            trial.set_user_attr(key, value)
    if cfg.worker_index is not None:
        trial.set_user_attr(Attr.WORKER, cfg.worker_index)
    for name, value in overshoot(cost, cfg).items():
        trial.set_constraint(name, value)


def run_slots_taken(study: optuna.Study, run_id: str) -> int:
    """Trials of run ``run_id`` that took one of its ``--trials``: trained, stopped or failed, or
    running now (a running one may still be rejected over budget, in a moment, freeing its slot)."""
    taken = (Status.TRAINED, Status.STOPPED, Status.FAILED)
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(Attr.RUN) == run_id
               and (t.state == _TrialState.RUNNING or t.user_attrs.get(Attr.STATUS) in taken))


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, progress: Progress) -> None:
    trial.set_user_attr(Attr.STATUS, Status.FAILED)
    trial.set_user_attr(Attr.FAIL_REASON, reason[:1000])
    study.tell(trial, state=_TrialState.FAIL)
    progress.log(f"#{trial.number:<4d} failed: {reason}")


def _fail_unless_told(study: optuna.Study, trial: optuna.Trial, reason: str, progress: Progress) -> None:
    try:
        _fail(study, trial, reason, progress)
    except optuna.exceptions.UpdateFinishedTrialError:  # interrupted after the trial was recorded
        pass
