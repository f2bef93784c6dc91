"""Several workers on one study: local processes on SQLite, and a real PostgreSQL server."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nas_kd.search.cli import main
from nas_kd.study.records import front_records, trial_records
from tests.pg import pg_bin, postgres_server

ARGS = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "3", "--batch-size", "32",
        "--promote-until", "0"]  # the tail: test_search_rungs


def _check_shared_study(study, total, workers):
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert len(trained) == total
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    by_worker = {w: sum(t.user_attrs.get("worker") == w for t in trained) for w in range(workers)}
    assert sum(by_worker.values()) == total and all(n > 0 for n in by_worker.values())
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    return trained


def test_by_default_one_single_thread_worker_per_core_shares_one_sqlite_study(tmp_path, cache_dir, capsys,
                                                                             monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the same two workers on any machine
    args = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "w",
            "--trials", "4"]  # neither --workers nor --threads
    assert main(args) == 0
    assert "starting 2 workers (1 thread(s) each" in capsys.readouterr().err
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'w.db'}")
    _check_shared_study(study, total=4, workers=2)
    flags = study.user_attrs["nas_kd.settings"]["flags"]
    assert (flags["--workers"], flags["--threads"]) == ("2", "1")  # the effective values
    front = json.loads((tmp_path / "w" / "front.json").read_text())
    expected = front_records(trial_records(study))
    assert [r["number"] for r in front] == [r.number for r in expected]


def test_threads_alone_a_gpu_or_workers_1_mean_one_process(monkeypatch):
    from nas_kd.search.cli import parse_args

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    default, two = parse_args([]), parse_args(["--workers", "2"])
    assert (default.workers, default.training_threads) == (4, 1)  # every core busy, one thread each
    assert (two.workers, two.training_threads) == (2, 2)  # the cores shared by the workers asked for
    for args in (["--threads", "3"], ["--workers", "1"], ["--device", "cuda"]):
        assert parse_args(args).workers == 1, args


@pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
def test_two_workers_on_a_real_postgresql_server(tmp_path, cache_dir, capsys):
    pytest.importorskip("psycopg")
    with postgres_server() as url:
        args = [*ARGS, "--studies-dir", str(tmp_path / "studies"), "--cache-dir", str(cache_dir),
                "--study-name", "pgw", "--storage", url, "--trials", "4", "--workers", "2"]
        assert main(args) == 0
        study = optuna.load_study(study_name="pgw", storage=url)
        _check_shared_study(study, total=4, workers=2)
        front = json.loads((tmp_path / "studies" / "pgw" / "front.json").read_text())
        assert [r["number"] for r in front] == [r.number for r in front_records(trial_records(study))]
        # the password appears nowhere: not in output, study attributes or the report
        out = capsys.readouterr()
        assert "s3cret-pw" not in out.out + out.err
        assert "s3cret-pw" not in json.dumps(study.user_attrs)
        assert "s3cret-pw" not in (tmp_path / "studies" / "pgw" / "report.html").read_text()
        # a second run against the same server resumes the shared study
        assert main([*args[:-4], "--trials", "1"]) == 0
        assert len([t for t in optuna.load_study(study_name="pgw", storage=url).trials
                    if t.user_attrs.get("status") == "trained"]) == 5


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _worker_command_lines(proc: subprocess.Popen, n: int, timeout: float = 300) -> list[str]:
    """The command lines of ``proc``'s ``n`` worker processes, read while they run."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"only {len(seen)} workers started in time"
        for pid in _children(proc.pid):
            try:
                line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "--worker-index" in line:  # started (a child not yet exec'd still shows its parent's line)
                seen[pid] = line
        time.sleep(0.05)
    return list(seen.values())


@pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")
def test_local_workers_get_the_database_password_outside_their_command_lines(tmp_path, cache_dir):
    # Any local user can read a process's command line (ps, /proc/PID/cmdline), not its environment.
    pytest.importorskip("psycopg")
    with postgres_server() as url:
        password = "s3cret-pw"
        assert password in url  # trust authentication ignores it, but it is in the URL the user gave
        cmd = [sys.executable, "-m", "nas_kd.search", *ARGS, "--studies-dir", str(tmp_path), "--cache-dir",
               str(cache_dir), "--study-name", "pwd", "--storage", url, "--trials", "4", "--workers", "2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = _worker_command_lines(proc, 2)
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert len(lines) == 2 and all("nas_kd.search" in line for line in lines)
        assert not [line for line in lines if password in line or "--storage" in line], lines
        assert proc.returncode == 0, err[-4000:]
        _check_shared_study(optuna.load_study(study_name="pwd", storage=url), total=4, workers=2)
        assert password not in out + err


def test_unreachable_database_is_one_clear_line_without_the_password(tmp_path, capsys):
    url = "postgresql://user:hunter2-pw@127.0.0.1:1/nothing"
    code = main([*ARGS, "--studies-dir", str(tmp_path), "--storage", url, "--trials", "1", "--alpha", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open study storage postgresql://user:***@127.0.0.1:1/nothing")
    assert "hunter2-pw" not in err and "Traceback" not in err


# The race tests start real processes (as `--workers` does), not fork()ed copies of pytest: a fork
# of a process that has run torch, Optuna heartbeats and SQLite can inherit a held lock and hang.
_TOGETHER = """
import json, os, sys, time
from pathlib import Path
from nas_kd.study.storage import ask_trial, open_study
go, task, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
results = []
for r, url in enumerate(urls):
    Path(f"{go}-{r}.{os.getpid()}.ready").touch()
    while not Path(f"{go}-{r}").exists():  # a barrier: all processes start each round together
        time.sleep(0.001)
    if task == "open":
        try:
            open_study("race", url)
            results.append("ok")
        except Exception as err:
            results.append(str(err))
    else:
        study, numbers = open_study("queue", url), []
        for _ in range(5):
            trial = ask_trial(study, url)
            numbers.append(trial.number)
            study.tell(trial, [0.5, 1.0])  # raises UpdateFinishedTrialError if a peer popped it too
        results.append(numbers)
print(json.dumps(results))
"""


def _together(tmp_path, task: str, urls: list[str], n: int = 6, timeout: float = 240) -> list[list]:
    """Run ``task`` on each URL in turn in ``n`` fresh Python processes, all released at the same
    instant for each URL; per process, its results in URL order."""
    go = tmp_path / f"go-{task}"
    procs = [subprocess.Popen([sys.executable, "-c", _TOGETHER, str(go), task, *urls],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        deadline = time.monotonic() + timeout
        for r in range(len(urls)):
            while len(list(tmp_path.glob(f"{go.name}-{r}.*.ready"))) < n:
                ended = [p for p in procs if p.poll() is not None]
                assert not ended, ended[0].communicate()[1]
                assert time.monotonic() < deadline, f"the worker processes did not reach round {r} in time"
                time.sleep(0.01)
            Path(f"{go}-{r}").touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, err
            results.append(json.loads(out))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_workers_starting_together_on_a_fresh_database_all_open_it(tmp_path):
    # Several processes creating one SQLite schema at once race on CREATE TABLE and on the alembic
    # version row (workers starting together, a reader opening the file while a search starts).
    urls = [f"sqlite:///{tmp_path / f'race{round_}.db'}" for round_ in range(4)]
    assert _together(tmp_path, "open", urls) == [["ok"] * 4] * 6
    assert len(optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'race0.db'}")) == 1


def test_workers_never_pop_the_same_enqueued_trial_from_sqlite(tmp_path):
    # SQLite ignores Optuna's SELECT ... FOR UPDATE: without ask_trial's lock, processes popping
    # enqueued trials at the same time can take the same one.
    from nas_kd.study.storage import open_study

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = open_study("queue", url)
    for k in range(30):
        study.enqueue_trial({"x": k})
    numbers = [n for [got] in _together(tmp_path, "pop", [url]) for n in got]
    assert sorted(numbers) == list(range(30))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_worker_done_with_its_share_helps_a_run_short_of_its_trials(tmp_path, cache_dir):
    # Promotions make workers' shares uneven: one finishes its candidates while another still has
    # several to train. Here worker 1's nominal share is 1 trial, but its run needs 3 and no other
    # worker is training them: it trains all 3 rather than leave a core idle, and no more.
    common = [*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "h",
              "--no-warm-start", "--rungs", "1"]
    assert main([*common, "--trials", "1", "--workers", "1"]) == 0  # the study, prepared as a parent would
    assert main([*common, "--trials", "1", "--workers", "1", "--worker-index", "1", "--run-id", "r1",
                 "--run-trials", "3"]) == 0
    study = optuna.load_study(study_name="h", storage=f"sqlite:///{tmp_path / 'h.db'}")
    mine = [t for t in study.trials if t.user_attrs.get("run") == "r1" and t.user_attrs.get("status") == "trained"]
    assert len(mine) == 3 and all(t.user_attrs["worker"] == 1 for t in mine)
    # the same run again has its trials: nothing more is trained
    assert main([*common, "--trials", "1", "--workers", "1", "--worker-index", "0", "--run-id", "r1",
                 "--run-trials", "3"]) == 0
    study = optuna.load_study(study_name="h", storage=f"sqlite:///{tmp_path / 'h.db'}")
    assert sum(t.user_attrs.get("status") == "trained" for t in study.trials) == 1 + 3
