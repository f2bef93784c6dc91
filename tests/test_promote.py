"""Claims on promotions: whatever the timing, each promotion is trained by exactly one worker, and a
promotion whose worker stopped is open again."""

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna

from nas_kd.search.promote import fail_claim, open_rungs, promoted, record_rung, try_claim
from nas_kd.search.rungs import RungResult

_CLAIMS = """
import json, os, sys, time
from pathlib import Path
from nas_kd.search.promote import open_rungs, try_claim
from nas_kd.search.rungs import RungResult
go, url = sys.argv[1], sys.argv[2]
rungs = open_rungs("race", url)
Path(f"{go}.{os.getpid()}.ready").touch()
while not Path(go).exists():  # a barrier: every process claims at the same instant
    time.sleep(0.001)
won = []
for candidate in range(4):
    claim = try_claim(rungs, RungResult(candidate, 0, 0.9, 1000 + candidate))
    if claim is not None:
        won.append([claim.source, claim.rung])
print(json.dumps(won))
"""


def test_racing_workers_never_claim_the_same_promotion_twice(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    open_rungs("race", url)  # the schema exists before the race (its own race is tested elsewhere)
    go, n = tmp_path / "go", 6
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMS, str(go), url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("go.*.ready"))) < n:
            assert not [p for p in procs if p.poll() is not None], procs[0].communicate()[1]
            assert time.monotonic() < deadline, "the claiming processes did not start in time"
            time.sleep(0.01)
        go.touch()
        won = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, err
            won += [tuple(pair) for pair in json.loads(out)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(won) == [(c, 1) for c in range(4)]  # every promotion once, by one process
    rungs = open_rungs("race", url)
    assert promoted(rungs) == {(c, 0) for c in range(4)}


def test_a_failed_claim_opens_the_promotion_again_and_a_finished_one_counts(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    rungs = open_rungs("s", url)
    result = RungResult(7, 0, 0.91, 4_000_000)
    claim = try_claim(rungs, result)
    assert claim is not None and claim.rung == 1 and promoted(rungs) == {(7, 0)}
    assert try_claim(rungs, result) is None  # taken
    fail_claim(rungs, claim, "interrupted by the user", reopen=True)
    assert promoted(rungs) == set()
    again = try_claim(rungs, result)
    assert again is not None and again.number > claim.number
    record_rung(rungs, again, 0.93, 12.5)
    other = try_claim(rungs, RungResult(8, 0, 0.9, 1_000_000))
    fail_claim(rungs, other, "TrialFailed: loss became nan", reopen=False)  # failed on its own: not again
    assert try_claim(rungs, RungResult(8, 0, 0.9, 1_000_000)) is None
    done = [t for t in rungs.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [(t.user_attrs["source"], t.user_attrs["rung"], t.values[0]) for t in done] == [(7, 1, 0.93)]
    assert promoted(rungs) == {(7, 0), (8, 0)}
    assert Path(tmp_path / "s.db").exists()
