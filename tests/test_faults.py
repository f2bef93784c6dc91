"""Faults: killed and interrupted workers, broken storage, full disks, determinism, unsafe files."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

import nas_kd.search.candidate as candidate
import nas_kd.search.loop as trial_loop
from nas_kd import interrupts
from nas_kd.errors import TrialFailed
from nas_kd.search.cli import main
from nas_kd.study.records import to_record
from tests.test_workers import _children

# --workers 1: trials run in the test's own process, where the tests' monkeypatches reach them
# (by default a search starts one worker process per core). A later --workers N overrides it.
ARGS = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--batch-size", "32", "--workers", "1"]
STALE_SOON = {"NAS_KD_HEARTBEAT_SECONDS": "1", "NAS_KD_GRACE_SECONDS": "3"}  # a stopped worker's trial fails soon


def _load(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path / (name + '.db')}")


def _as_from_a_terminal() -> None:
    # A search started from a terminal: Ctrl-C is live (pytest itself may run as a script's background
    # job, whose children inherit an ignored SIGINT), in a process group of its own, like a shell job.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setpgrp()


def _as_a_script_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does
    os.setpgrp()


def _start(tmp_path, cache_dir, name, *extra, env=None, how=_as_from_a_terminal):
    cmd = [sys.executable, "-m", "nas_kd.search", *ARGS, "--studies-dir", str(tmp_path), "--cache-dir",
           str(cache_dir), "--study-name", name, "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=how)


def _wait_for_running_trial(tmp_path, name, proc, after_trained=0, timeout=180):
    return _wait_for_running_trials(tmp_path, name, proc, after_trained, timeout)[0]


def _wait_for_running_trials(tmp_path, name, proc, after_trained=0, timeout=180, count=1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (tmp_path / f"{name}.db").exists():
            try:
                trials = _load(tmp_path, name).trials
            except Exception:  # noqa: BLE001 - the study may not exist yet
                trials = []
            trained = sum(t.user_attrs.get("status") == "trained" for t in trials)
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "flops" in t.user_attrs
                       and t.user_attrs.get("status") is None and t.user_attrs["flops"] <= 150_000]
            if len(running) >= count and trained >= after_trained:
                return [t.number for t in running]
        time.sleep(0.3)
    raise AssertionError("no trial started training in time")


def test_ctrl_c_fails_the_running_trial_exits_130_and_resumes(tmp_path, cache_dir):
    proc = _start(tmp_path, cache_dir, "int", "--trials", "3", "--promote-until", "0", "--epochs", "400")
    number = _wait_for_running_trial(tmp_path, "int", proc)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out[-2000:], err[-4000:])
    assert "interrupted: finished trials are saved" in err and "Traceback" not in err
    t = _load(tmp_path, "int").trials[number]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted by the user"
    # the same command (shorter training, so the test is quick) resumes the study
    assert main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "int",
                 "--trials", "1", "--promote-until", "0", "--epochs", "400", "--timeout", "0.001"]) == 0


def test_ctrl_c_before_training_fails_that_trial_too(tmp_path, cache_dir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_loop, "screen", interrupted)  # Ctrl-C while the candidate is counted
    assert main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "early",
                 "--trials", "2", "--promote-until", "0", "--epochs", "3"]) == 130
    assert "interrupted: finished trials are saved" in capsys.readouterr().err
    (last,) = [t for t in _load(tmp_path, "early").trials if t.state != optuna.trial.TrialState.WAITING]
    assert last.state == optuna.trial.TrialState.FAIL and last.user_attrs["fail_reason"] == "interrupted by the user"


@pytest.mark.parametrize("how", ["terminal ctrl-c", "kill of a background job"])
def test_stopping_a_multi_worker_search_stops_every_worker_once(tmp_path, cache_dir, how):
    start = _as_from_a_terminal if how == "terminal ctrl-c" else _as_a_script_background_job
    proc = _start(tmp_path, cache_dir, "wk", "--trials", "4",
                  "--promote-until", "0", "--epochs", "400", "--workers", "2", how=start)
    numbers = _wait_for_running_trials(tmp_path, "wk", proc, count=2)
    time.sleep(1.0)
    if how == "terminal ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the foreground job's process group
    else:
        proc.send_signal(signal.SIGTERM)  # workers ignore SIGINT here: they must get SIGTERM
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (out[-2000:], err[-4000:])
    assert "interrupted: finished trials are saved" in err and "Traceback" not in err
    study = _load(tmp_path, "wk")
    for number in numbers:
        t = study.trials[number]
        assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted by the user"
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.fixture
def stack():
    """Handlers installed within the test are undone, then the ones the test set are too."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with contextlib.ExitStack() as stack:
        yield stack
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_main_gives_the_callers_signal_handlers_back(tmp_path, stack):
    # main() run from Python (a notebook, a test, a user's script) must not leave our stop handler
    # behind: a later SIGTERM would raise KeyboardInterrupt in whatever the caller does next.
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert main(["--dataset", "tiny", "--budget", "nonsense", "--studies-dir", str(tmp_path)]) == 2
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_during_trials_is_raised_at_our_checks_and_a_second_one_at_once(stack):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack.enter_context(interrupts.installed())
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("library code goes on")  # e.g. a weakref callback that would have lost the stop
        interrupts.check()
        steps.append("not reached")
    assert steps == ["library code goes on"]
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the second stop does not wait for a check
        steps.append("not reached")
    with pytest.raises(KeyboardInterrupt):  # outside the trial loop a stop raises at once
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert steps == ["library code goes on"]


def test_ctrl_c_while_a_network_trains_stops_it_at_the_next_step(stack):
    from nas_kd.train import TrainSettings, train_model

    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack.enter_context(interrupts.installed())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    steps = []

    def on_step(step: int, total: int, loss: float) -> None:
        steps.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("the code the stop landed in ran to its end")

    with pytest.raises(KeyboardInterrupt):
        train_model(model, x, y, TrainSettings(epochs=5, batch_size=8), on_step=on_step)
    assert steps == [1, 2, 3, "the code the stop landed in ran to its end"]  # and step 4 never ran


def test_an_ignored_ctrl_c_stays_ignored(stack):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a script's background job starts
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # how nohup starts us
    stack.enter_context(interrupts.installed())
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_a_closed_terminal_is_a_clean_stop(stack):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    stack.enter_context(interrupts.installed())
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGHUP)
        interrupts.check()


def test_sigkilled_worker_leaves_no_trial_running_forever(tmp_path, cache_dir):
    env = STALE_SOON
    proc = _start(tmp_path, cache_dir, "kill", "--trials", "3", "--promote-until", "0", "--epochs", "300", env=env)
    number = _wait_for_running_trial(tmp_path, "kill", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _load(tmp_path, "kill").trials[number].state == optuna.trial.TrialState.RUNNING
    time.sleep(4)
    # the next worker (here: the same command again, stopped at once by --timeout) fails the stale trial
    again = _start(tmp_path, cache_dir, "kill", "--trials", "1",
                   "--promote-until", "0", "--epochs", "300", "--timeout", "0.001", env=env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    study = _load(tmp_path, "kill")
    stale = study.trials[number]
    assert stale.state == optuna.trial.TrialState.FAIL
    assert "no heartbeat" in to_record(stale).fail_reason
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_trial_beats_from_the_ask_not_only_while_it_trains(tmp_path, cache_dir, monkeypatch):
    # a worker killed while it counts a candidate (before training) must leave a trial a peer can fail
    for key, value in STALE_SOON.items():
        monkeypatch.setenv(key, value)
    beating = []

    def counted(*args, **kwargs):
        with sqlite3.connect(tmp_path / "beat.db") as db:
            running = db.execute("SELECT trial_id FROM trials WHERE state = 'RUNNING'").fetchall()
            beats = db.execute("SELECT trial_id FROM trial_heartbeats").fetchall()
        beating.append(bool(running) and set(running) <= set(beats))
        return screen(*args, **kwargs)

    screen = trial_loop.screen
    monkeypatch.setattr(trial_loop, "screen", counted)
    assert main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "beat",
                 "--trials", "1", "--promote-until", "0", "--epochs", "1"]) == 0
    assert beating and all(beating)


def _warm_space(tmp_path, *names: str) -> Path:
    """The default space with small hand designs (they fit the tiny budget) as its warm start."""
    lines = {"hand-a": "stem8/s1 | ds k3 c16 s2 x1 | fc | relu", "hand-b": "stem8/s2 | ir2 k3 c16 s1 x1 | fc | relu"}
    text = (Path(__file__).parent.parent / "search_spaces" / "default-v1.yaml").read_text().split("warm_start:")[0]
    space = tmp_path / "warm.yaml"
    space.write_text(text + "warm_start:\n" + "".join(f"  {n}: {lines[n]}\n" for n in names))
    return space


def _design_trials(tmp_path, name: str, design: str) -> list[tuple[optuna.trial.TrialState, str | None]]:
    """(state, status) of each trial of the hand design ``design``, in order (a stale trial: "failed")."""
    return [(t.state, to_record(t).status) for t in _load(tmp_path, name).trials
            if t.user_attrs.get("warm_start") == design]


def _worker_pid(parent: int, index: int) -> int:
    for pid in _children(parent):
        try:
            if f"--worker-index {index} " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                return pid
        except OSError:
            continue
    raise AssertionError(f"worker {index} is not running")


_FAILED, _TRAINED = (optuna.trial.TrialState.FAIL, "failed"), (optuna.trial.TrialState.COMPLETE, "trained")


def test_a_killed_workers_hand_design_is_trained_when_the_search_resumes(tmp_path, cache_dir):
    space, hold = _warm_space(tmp_path, "hand-a"), tmp_path / "hold"
    hold.touch()  # every worker waits just before training (tests/hold.py) until the file is gone
    env = {**STALE_SOON, "NAS_KD_PLUGINS": "tests.tiny,tests.hold", "NAS_KD_TEST_HOLD": str(hold)}
    args = ["--space", str(space), "--epochs", "3"]
    proc = _start(tmp_path, cache_dir, "rq", *args, "--trials", "2", "--promote-until", "0", "--workers", "2", env=env)
    deadline, design = time.time() + 300, None
    while design is None:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        if (tmp_path / "rq.db").exists():
            with contextlib.suppress(Exception):  # the study may not exist yet
                design = next((t for t in _load(tmp_path, "rq").trials if t.state == optuna.trial.TrialState.RUNNING
                               and t.user_attrs.get("warm_start") == "hand-a" and "worker" in t.user_attrs), None)
        time.sleep(0.2)
    index = design.user_attrs["worker"]
    os.kill(_worker_pid(proc.pid, index), signal.SIGKILL)  # while it trains the hand design
    hold.unlink()  # the other worker trains its candidate and finishes
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and f"worker {index} was stopped by signal 9" in err, err[-4000:]
    time.sleep(4)  # the killed worker's heartbeat is past the grace period
    again = _start(tmp_path, cache_dir, "rq", *args, "--trials", "1", "--promote-until", "0", env=STALE_SOON)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-4000:]
    assert _design_trials(tmp_path, "rq", "hand-a") == [_FAILED, _TRAINED]


def test_ctrl_c_while_a_hand_design_trains_queues_it_again(tmp_path, cache_dir, monkeypatch, capsys):
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "rqc",
            "--space", str(_warm_space(tmp_path, "hand-a")), "--epochs", "3"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trial_loop, "train_candidate", interrupted)
        assert main([*args, "--trials", "2", "--promote-until", "0"]) == 130
    assert _design_trials(tmp_path, "rqc", "hand-a") == [_FAILED]
    assert main([*args, "--trials", "1", "--promote-until", "0"]) == 0
    assert "hand-a queued again" in capsys.readouterr().err
    assert _design_trials(tmp_path, "rqc", "hand-a") == [_FAILED, _TRAINED]


def test_a_hand_design_that_failed_on_its_own_is_not_queued_again(tmp_path, cache_dir, monkeypatch):
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "rqn",
            "--space", str(_warm_space(tmp_path, "hand-a", "hand-b")), "--epochs", "3"]
    calls = []

    def diverges_then_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise TrialFailed("loss became nan at step 3/36")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trial_loop, "train_candidate", diverges_then_interrupted)
        assert main([*args, "--trials", "3", "--promote-until", "0"]) == 130
    assert main([*args, "--trials", "1", "--promote-until", "0"]) == 0  # trains the one design whose run was stopped
    assert _design_trials(tmp_path, "rqn", "hand-a") == [_FAILED]
    assert _design_trials(tmp_path, "rqn", "hand-b") == [_FAILED, _TRAINED]


def test_same_seed_same_architectures_and_results(tmp_path, cache_dir):
    for name in ("a", "b"):
        assert main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", name,
                     "--trials", "2", "--promote-until", "0", "--epochs", "3", "--threads", "1"]) == 0
    a, b = _load(tmp_path, "a").trials, _load(tmp_path, "b").trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]


def test_out_of_memory_fails_the_trial_not_the_study(tmp_path, cache_dir, monkeypatch):
    real = candidate.train_model
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(candidate, "train_model", flaky)
    assert main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "oom",
                 "--trials", "2", "--promote-until", "0", "--epochs", "3"]) == 0
    trials = _load(tmp_path, "oom").trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "OutOfMemoryError" in failed[0].user_attrs["fail_reason"]
    assert sum(t.user_attrs.get("status") == "trained" for t in trials) == 1


def test_disk_full_is_one_message_and_keeps_finished_work(tmp_path, cache_dir, monkeypatch, capsys):
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "full",
            "--epochs", "3"]
    assert main([*args, "--trials", "1", "--promote-until", "0"]) == 0
    capsys.readouterr()

    def no_space(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "full" / "trials" / "x.pt.tmp"))

    monkeypatch.setattr(torch, "save", no_space)  # the trial's weights are the first thing saved
    assert main([*args, "--trials", "1", "--promote-until", "0"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "No space left on device" in last and "Traceback" not in err
    assert sum(t.user_attrs.get("status") == "trained" for t in _load(tmp_path, "full").trials) == 1


def test_corrupt_sqlite_file(tmp_path, cache_dir, capsys):
    (tmp_path / "bad.db").write_bytes(b"this is not a database" * 100)
    code = main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "bad"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open study storage sqlite:///") and "Traceback" not in err


def test_locked_sqlite_file(tmp_path, cache_dir, capsys, monkeypatch):
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "locked",
            "--epochs", "3", "--trials", "1", "--promote-until", "0"]
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setattr("nas_kd.study.storage.SQLITE_LOCK_TIMEOUT", 0.5)
    holder = sqlite3.connect(tmp_path / "locked.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert main(args) == 2
    finally:
        holder.rollback()
        holder.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "locked" in err and "Traceback" not in err


def test_a_worker_with_another_teacher_is_refused(tmp_path, cache_dir, capsys):
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "tch",
            "--epochs", "3", "--trials", "1", "--promote-until", "0"]
    assert main(args) == 0
    assert main([*args, "--teacher-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "teacher" in err


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nas_kd_pwned",))


def test_a_pickle_with_code_is_never_executed(tmp_path, cache_dir, capsys):
    import json
    import shutil

    from nas_kd.data import load_dataset, split_dataset
    from nas_kd.files import sha256_file
    from nas_kd.teacher import load_or_train_teacher

    load_or_train_teacher(split_dataset(load_dataset("tiny"), val_size=58, seed=0), cache_dir=cache_dir)
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    member = next(cache.glob("teachers/tiny-quick-*-seed0/member-0.pt"))
    torch.save({"x": _Evil()}, member)
    record = member.with_suffix(".json")
    info = json.loads(record.read_text())
    info["sha256"] = sha256_file(member)  # even with a matching hash, weights_only refuses it
    record.write_text(json.dumps(info))
    Path("/tmp/nas_kd_pwned").unlink(missing_ok=True)
    code = main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache), "--study-name", "evil"])
    assert code == 2
    assert "cannot load teacher weights" in capsys.readouterr().err
    assert not Path("/tmp/nas_kd_pwned").exists()


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/x/y.db", "notadb://host/x"])
def test_bad_storage_urls(tmp_path, url, capsys):
    code = main([*ARGS, "--studies-dir", str(tmp_path), "--storage", url, "--alpha", "0"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: cannot open study storage")
