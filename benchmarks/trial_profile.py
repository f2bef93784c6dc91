"""Where a search trial's time goes (benchmark 4), measured on a real search run:

1. a search with the default protocol (rungs and promotions, the whole training split; warm start
   off, so every candidate is sampled) runs in this process with timers around each stage of the
   trial path: sampling, cost counting, building, the student's forward / backward / optimiser step,
   the rest of the training loop, evaluation after rung 0 and after each promotion, checkpoint saves
   and the loads a promotion resumes from, the weights file, the promotion bookkeeping in the study
   (reading rung results, claiming, recording), and the remainder of the wall time (storage, logging);
2. KD trial time over label-only trial time: the same candidates trained both ways, alternating;
3. our training loop's samples/s over a bare hand-written PyTorch loop on the same models.

    python benchmarks/trial_profile.py --threads 1 --trials 12

Prints the figures and writes one row per measurement to ``trial_profile.csv`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path

import optuna
import torch
from csv_rows import append_rows

import nas_kd.search.budget as budget
import nas_kd.search.candidate as candidate
import nas_kd.search.loop as trial_loop
import nas_kd.train.loop as train_loop
from nas_kd.distill.losses import KDSettings
from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.progress import Progress
from nas_kd.search.candidate import trial_settings
from nas_kd.search.config import SearchConfig
from nas_kd.search.prepare import Run, prepare
from nas_kd.search.space import SearchSpace
from nas_kd.train import TrainSettings, train_model

HERE = Path(__file__).parent
TIMES: dict[str, float] = defaultdict(float)
IN_TRAINING = False


def _timed(name: str, fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start
    return wrapper


PHASE = "rung 0"  # what the process is doing: a candidate's first rung, or a promotion


def _phase(name: str, fn):  # noqa: ANN001, ANN202
    """Run ``fn`` as phase ``name``: training and evaluation inside it are booked under that name."""
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        global PHASE
        PHASE = name
        try:
            return fn(*args, **kwargs)
        finally:
            PHASE = "rung 0"
    return wrapper


def _eval_timer(fn):  # noqa: ANN001, ANN202
    """Evaluation, split by where it happens: half-way (early stopping, one-rung searches only; it
    also sits inside the training loop's time and is taken out of the loop's remainder), after rung 0,
    or after a promotion."""
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            where = ("evaluation: half-way (early stopping)" if IN_TRAINING
                     else f"evaluation: after {PHASE} (5,000 validation images)")
            TIMES[where] += time.perf_counter() - start
    return wrapper


def _training_timer(fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        global IN_TRAINING
        IN_TRAINING = True
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            IN_TRAINING = False
            TIMES[f"training loop: {PHASE}"] += time.perf_counter() - start
    return wrapper


def _hook_student(model: torch.nn.Module) -> torch.nn.Module:
    """Time the student's own forward passes while it trains (evaluation is timed separately)."""
    starts: list[float] = []
    model.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()) if m.training else None)

    def done(m, a, out):  # noqa: ANN001, ANN202
        if m.training and starts:
            TIMES["student forward"] += time.perf_counter() - starts.pop()
    model.register_forward_hook(done)
    return model


def profile_search(cfg: SearchConfig) -> tuple[dict[str, float], int, float]:
    """Run ``cfg`` with timers in place; return seconds per stage, trials trained and total wall time."""
    patches = {  # (module that calls it, name): timer
        (trial_loop, "build_student"): lambda f: _timed("building", lambda spec: _hook_student(f(spec))),
        (budget, "walk_spec"): lambda f: _timed("cost: analytic screen (FLOPs and int8 footprint)", f),
        (budget, "count_cost"): lambda f: _timed("cost: fvcore count", f),
        (trial_loop, "train_promotion"): lambda f: _phase("a promotion", f),
        (candidate, "train_model"): _training_timer,
        (candidate, "accuracy"): _eval_timer,
        (train_loop, "save_checkpoint"): lambda f: _timed("checkpoint: save (every epoch and each rung's end)", f),
        (train_loop, "load_checkpoint"): lambda f: _timed("checkpoint: load (a promotion resumes)", f),
        (trial_loop, "save_weights"): lambda f: _timed("weights file: save (each rung's end)", f),
        **{(trial_loop, name): (lambda f: _timed("promotion bookkeeping (rung results, claim, record)", f))
           for name in ("rung_results", "promoted", "try_claim", "claim_trial", "record_rung")},
    }
    saved = {where: getattr(*where) for where in patches}
    saved_backward, saved_step = torch.Tensor.backward, torch.optim.SGD.step
    saved_ask = optuna.Study.ask
    for where, wrap in patches.items():
        setattr(*where, wrap(saved[where]))
    torch.Tensor.backward = _timed("student backward", saved_backward)
    torch.optim.SGD.step = _timed("optimiser step", saved_step)
    optuna.Study.ask = _timed("sampling (ask)", saved_ask)
    space_sample = SearchSpace.sample
    SearchSpace.sample = _timed("sampling (space)", space_sample)
    try:
        progress = Progress(quiet=True)
        run = prepare(cfg, progress)
        TIMES.clear()  # the per-process preparation (data, teacher logits) is not a trial's cost
        start = time.perf_counter()
        stats = trial_loop.run_trials(run, progress)
        wall = time.perf_counter() - start
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
        torch.Tensor.backward, torch.optim.SGD.step, optuna.Study.ask = saved_backward, saved_step, saved_ask
        SearchSpace.sample = space_sample
    return dict(TIMES), stats.trained, wall


def kd_vs_labels(run: Run, specs: list, rounds: int) -> tuple[float, float]:
    """Seconds to train ``specs`` as search trials with KD from cached logits, and with labels only."""
    settings = trial_settings(run.cfg, len(run.y_train))
    totals = {"kd": 0.0, "labels": 0.0}
    for r in range(rounds):
        for spec in specs:
            modes = ("kd", "labels") if r % 2 == 0 else ("labels", "kd")  # alternate to cancel drift
            for mode in modes:
                torch.manual_seed(0)
                model = build_student(spec).to(memory_format=torch.channels_last)
                kd = KDSettings() if mode == "kd" else KDSettings(alpha=0.0)
                result = train_model(model, run.x_train, run.y_train, settings, kd=kd,
                                     teacher_logits=run.teacher_logits if mode == "kd" else None)
                totals[mode] += result.seconds
    return totals["kd"], totals["labels"]


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, bs: int) -> float:
    """The loop anyone would write by hand: shuffle, slice, forward, cross-entropy, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(y))
    for i in range(steps):
        idx = order[i * bs:(i + 1) * bs]
        xb = x[idx].contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def loop_vs_bare(run: Run, specs: list, rounds: int) -> list[tuple[str, float, float]]:
    """Samples/s of ``train_model`` (label-only, no augmentation) and of ``bare_loop``, per spec."""
    bs = 128
    steps = len(run.y_train) // bs
    out = []
    for spec in specs:
        ours, bare = [], []
        for r in range(rounds):
            for mode in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                torch.manual_seed(0)
                model = build_student(spec).to(memory_format=torch.channels_last)
                if mode == "ours":
                    settings = TrainSettings(epochs=1, batch_size=bs, lr=0.05)
                    ours.append(steps * bs / train_model(model, run.x_train, run.y_train, settings).seconds)
                else:
                    bare.append(steps * bs / bare_loop(model, run.x_train, run.y_train, steps, bs))
        out.append((spec.summary(), statistics.median(ours), statistics.median(bare)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-subset", type=int, help="training images per trial (default: the whole split)")
    p.add_argument("--epochs", type=float, help="rung 0's length (default: the search's)")
    p.add_argument("--rounds", type=int, default=2, help="repeats of each side-by-side comparison")
    p.add_argument("--out", default=str(HERE / "trial_profile.csv"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    machine = f"{platform.node()} {a.threads} thread(s)"

    def record(part: str, item: str, value: float, unit: str) -> None:
        rows.append({"date": date.today().isoformat(), "machine": machine, "part": part, "item": item,
                     "value": round(value, 4), "unit": unit})

    with tempfile.TemporaryDirectory() as tmp:
        # the default protocol (rungs, the whole training split); --train-subset/--epochs shrink it
        defaults = SearchConfig()
        train = TrainSettings(epochs=a.epochs or defaults.train.epochs, lr=defaults.train.lr)
        cfg = SearchConfig(trials=a.trials, train_subset=a.train_subset, threads=a.threads, train=train,
                           studies_dir=tmp, study_name="profile", warm_start=False)
        times, trained, wall = profile_search(cfg)
        loops = {k: v for k, v in times.items() if k.startswith("training loop: ")}
        inner = times["student forward"] + times["student backward"] + times["optimiser step"]
        saves = sum(v for k, v in times.items() if k.startswith("checkpoint: "))
        parts = {k: v for k, v in times.items() if k not in loops}
        parts["training: rest of the loop (batches, loss, zero_grad, schedule)"] = (
            sum(loops.values()) - inner - saves - times.get("evaluation: half-way (early stopping)", 0.0))
        parts["storage, logging, other"] = wall - sum(parts.values())
        promoted = sum(1 for t in optuna.load_study(study_name="profile.rungs", storage=cfg.storage_url).trials
                       if t.state == optuna.trial.TrialState.COMPLETE)
        print(f"1. where the time goes: {trained} candidates and {promoted} promotions trained in {wall:.1f} s "
              f"({wall / max(1, trained):.1f} s per candidate); of the training loops, "
              + ", ".join(f"{k[15:]} {v:.1f} s" for k, v in loops.items()))
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"   {k:<70s} {v:8.2f} s  {v / wall:6.1%}")
            record("time share", k, v / wall, "fraction of trial wall time")
        for k, v in loops.items():
            record("training seconds", k, v, "s")
        record("time share", "promotions trained", promoted, "count")
        record("time share", "wall seconds per trained trial", wall / max(1, trained), "s")

        cfg = replace(cfg, study_name="profile")
        run = prepare(cfg, Progress(quiet=True))
        done = [t for t in run.study.trials if t.user_attrs.get("status") == "trained"]
        specs = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in done[:4]]
        kd_s, labels_s = kd_vs_labels(run, specs, a.rounds)
        print(f"2. KD trial / label-only trial: {kd_s / labels_s:.3f} ({kd_s:.1f} s vs {labels_s:.1f} s, "
              f"{len(specs)} candidates × {a.rounds} rounds, alternating)")
        record("kd vs labels", "kd seconds", kd_s, "s")
        record("kd vs labels", "label-only seconds", labels_s, "s")
        record("kd vs labels", "ratio", kd_s / labels_s, "ratio")

        by_flops = sorted(done, key=lambda t: t.user_attrs["flops"])
        picks = [by_flops[0], by_flops[len(by_flops) // 2], by_flops[-1]]
        specs = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in picks]
        print("3. our loop vs a bare PyTorch loop (samples/s, label-only, no augmentation):")
        for (summary, ours, bare), t in zip(loop_vs_bare(run, specs, a.rounds), picks, strict=True):
            flops = t.user_attrs["flops"]
            print(f"   {flops / 1e6:5.2f} MFLOPs: ours {ours:7.0f}/s, bare {bare:7.0f}/s, ratio {ours / bare:.3f}"
                  f"  {summary}")
            record("loop vs bare", f"{flops} FLOPs ours", ours, "samples/s")
            record("loop vs bare", f"{flops} FLOPs bare", bare, "samples/s")
            record("loop vs bare", f"{flops} FLOPs ratio", ours / bare, "ratio")

    append_rows(Path(a.out), rows)


if __name__ == "__main__":
    main()
