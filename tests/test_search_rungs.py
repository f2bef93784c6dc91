"""Multi-fidelity search on the generated 'tiny' set: candidates go up rungs by Pareto rank, resume
from their checkpoints, and a stop during a promotion loses no finished rung."""

import optuna
import pytest
import torch

from nas_kd.model.builder import build_student
from nas_kd.model.spec import ArchSpec
from nas_kd.search.cli import main
from nas_kd.search.promote import rung_results
from nas_kd.search.rungs import banded_order
from nas_kd.study.records import trial_records

ARGS = ["--dataset", "tiny", "--budget", "150k", "--min-steps", "0", "--epochs", "1", "--batch-size", "32",
        "--no-warm-start", "--workers", "1", "--threads", "1", "--rungs", "3", "--eta", "2"]


def _search(tmp_path, cache_dir, *extra, name="r"):
    return main([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", name, *extra])


def _studies(tmp_path, name="r"):
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    return optuna.load_study(study_name=name, storage=url), optuna.load_study(study_name=name + ".rungs", storage=url)


def _done(rungs):
    return [t for t in rungs.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_the_best_candidates_go_up_rungs_and_the_front_reads_the_longest(tmp_path, cache_dir, capsys):
    assert _search(tmp_path, cache_dir, "--trials", "8", "--promote-until", "0") == 0
    out, err = capsys.readouterr()
    assert "| best rung-0 val " in err and "| best val " not in err  # the status says which rung its best is
    study, rungs = _studies(tmp_path)
    done = _done(rungs)
    by_rung = {k: [t.user_attrs["source"] for t in done if t.user_attrs["rung"] == k] for k in (1, 2)}
    # asynchronous (ASHA): a result in a rung's best half when it was seen went up; at the end the
    # best half of every rung has gone up (an early promotion is never undone, so a few more may have)
    results = rung_results(study, rungs)
    for k in (0, 1):
        at_k = [r for r in results if r.rung == k]
        best_half = {r.candidate for r in banded_order(at_k, top=150_000)[: len(at_k) // 2]}
        assert best_half and best_half <= set(by_rung[k + 1])
    assert set(by_rung[2]) <= set(by_rung[1]) and len(by_rung[1]) < 8
    assert len({(t.user_attrs["source"], t.user_attrs["rung"]) for t in done}) == len(done)  # each once
    records = {r.number: r for r in trial_records(study)}
    for source in by_rung[1]:
        r = records[source]
        assert r.rung == (2 if source in by_rung[2] else 1) and len(r.rung_accuracies) == r.rung + 1
        assert r.val_accuracy == r.rung_accuracies[-1]
    # the sampler saw rung 0 only: every candidate's value is its first-rung accuracy
    assert all(t.values[0] == records[t.number].rung_accuracies[0] for t in study.trials
               if records[t.number].status == "trained")
    assert "rung" in out.splitlines()[1 + out.splitlines().index(next(
        line for line in out.splitlines() if line.startswith("Pareto front")))]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "accuracy by rung" in page and " → " in page


def test_time_left_after_the_last_candidate_promotes_past_the_quota_once_each(tmp_path, cache_dir):
    """By default (--promote-until) the time left goes to promotions past each rung's 1/eta: with
    time to spare every candidate reaches the top rung, two workers claiming each promotion once.
    With no time left (or 0) a rung promotes only its best 1/eta, as before."""
    code = _search(tmp_path, cache_dir, "--trials", "4", "--workers", "2", "--threads", "1", name="tail")
    assert code == 0
    study, rungs = _studies(tmp_path, "tail")
    done = [(t.user_attrs["source"], t.user_attrs["rung"]) for t in _done(rungs)]
    trained = {r.number for r in trial_records(study) if r.status == "trained"}
    assert len(trained) == 4 and len(done) == len(set(done))  # each promotion claimed once
    assert set(done) == {(n, k) for n in trained for k in (1, 2)}  # every candidate at the top rung
    assert {r.number: r.rung for r in trial_records(study) if r.number in trained} == dict.fromkeys(trained, 2)
    for until in ("0", "0.001"):  # off, and a deadline already past: the 1/eta quota only
        name = f"quota{until}"
        assert _search(tmp_path, cache_dir, "--trials", "4", "--promote-until", until, name=name) == 0
        study, rungs = _studies(tmp_path, name)
        by_rung = [sum(1 for t in _done(rungs) if t.user_attrs["rung"] == k) for k in (1, 2)]
        assert by_rung[0] < 4 and by_rung[1] <= by_rung[0] // 2 + 1
        if until == "0.001":  # once the candidates are done, even a due promotion must end in time
            last = max(t.datetime_complete for t in study.trials if t.datetime_complete is not None)
            assert all(t.datetime_start <= last for t in rungs.trials)


def test_by_default_the_tail_promotes_the_top_third_of_the_budget_before_the_rest(tmp_path, cache_dir):
    """By default (--tail top-band), once every candidate is trained, the results above a third of the
    budget go up (to the top rung) before any cheaper one; the search still takes every candidate up."""
    assert _search(tmp_path, cache_dir, "--trials", "8", name="band") == 0
    study, rungs = _studies(tmp_path, "band")
    last = max(t.datetime_complete for t in study.trials if t.datetime_complete is not None)
    tail = sorted((t for t in _done(rungs) if t.datetime_start > last), key=lambda t: t.number)
    in_band = [t.user_attrs["cost"] > 150_000 / 3 for t in tail]
    assert True in in_band and False in in_band  # both sides of the band line wait for the tail
    assert in_band == sorted(in_band, reverse=True)  # every top-band promotion before any other
    trained = {r.number: r for r in trial_records(study) if r.status == "trained"}
    assert all(r.rung == 2 for r in trained.values())


def test_a_bad_promote_until_is_one_clear_line(tmp_path, cache_dir, capsys):
    assert _search(tmp_path, cache_dir, "--trials", "1", "--promote-until", "-5") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --promote-until must be 0 (off) or a positive number") and "Traceback" not in err


def test_a_promoted_candidate_continues_from_its_checkpoint(tmp_path, cache_dir, monkeypatch):
    """A promotion trains only its rung's new steps, and the weights after rung 2 equal training the
    candidate straight through for rung 2's steps, with the schedule restarted where rungs 1 and 2 began."""
    import nas_kd.search.candidate as candidate

    real, first_steps = candidate.train_model, []

    def spy(*args, on_step=None, **kwargs):
        seen = []

        def record(step, total, loss):
            if not seen:
                seen.append(step)
                first_steps.append((kwargs.get("steps"), step))
            if on_step is not None:
                on_step(step, total, loss)

        return real(*args, on_step=record, **kwargs)

    monkeypatch.setattr(candidate, "train_model", spy)
    assert _search(tmp_path, cache_dir, "--trials", "4", "--promote-until", "0") == 0
    promotions = [(steps, first) for steps, first in first_steps if steps is not None]
    assert promotions and all(first > 1 for _, first in promotions)  # resumed: step 1 was trained before
    study, rungs = _studies(tmp_path)
    top = max(_done(rungs), key=lambda t: t.user_attrs["rung"])
    source = study.trials[top.user_attrs["source"]]
    assert top.user_attrs["rung"] == 2

    from nas_kd.progress import Progress
    from nas_kd.search.candidate import rung_length, trial_settings
    from nas_kd.search.cli import parse_args
    from nas_kd.search.prepare import prepare
    from nas_kd.train import train_model

    cfg = parse_args([*ARGS, "--studies-dir", str(tmp_path), "--cache-dir", str(cache_dir), "--study-name", "r"])
    run = prepare(cfg, Progress(quiet=True))
    steps, restarts = rung_length(run, 2)
    assert restarts == (rung_length(run, 0)[0], rung_length(run, 1)[0])
    torch.manual_seed(cfg.seed)
    model = build_student(ArchSpec.from_dict(source.user_attrs["spec"])).to(memory_format=torch.channels_last)
    train_model(model, run.x_train, run.y_train, trial_settings(cfg, len(run.y_train)), kd=cfg.kd,
                teacher_logits=run.teacher_logits, steps=steps, restarts=restarts)
    saved = torch.load(tmp_path / "r" / "trials" / f"{source.number}.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_ctrl_c_during_a_promotion_loses_no_finished_rung_and_the_rerun_finishes_it(tmp_path, cache_dir,
                                                                                  monkeypatch, capsys):
    import nas_kd.search.loop as loop

    real = loop.train_promotion
    calls = []

    def interrupted_second(run, model, kd, number, rung, show):  # the second promotion is stopped by Ctrl-C
        calls.append((number, rung))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run, model, kd, number, rung, show)

    monkeypatch.setattr(loop, "train_promotion", interrupted_second)
    assert _search(tmp_path, cache_dir, "--trials", "4", "--promote-until", "0") == 130
    study, rungs = _studies(tmp_path)
    first_done = [(t.user_attrs["source"], t.user_attrs["rung"]) for t in _done(rungs)]
    assert first_done == [calls[0]]  # the finished rung is kept
    stopped = [t for t in rungs.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [(t.user_attrs["source"], t.user_attrs["rung"]) for t in stopped] == [calls[1]]
    assert "interrupted" in stopped[0].user_attrs["fail_reason"]
    monkeypatch.setattr(loop, "train_promotion", real)
    capsys.readouterr()
    assert _search(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0") == 0  # the same command resumes
    done = {(t.user_attrs["source"], t.user_attrs["rung"]) for t in _done(rungs)}
    assert calls[0] in done and calls[1] in done  # the interrupted promotion was trained on resume


@pytest.mark.parametrize("flags", [["--rungs", "0"], ["--eta", "1"]])
def test_bad_rung_settings_are_one_clear_line(tmp_path, cache_dir, capsys, flags):
    assert _search(tmp_path, cache_dir, "--trials", "1", "--promote-until", "0", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rungs must be at least 1 and --eta at least 2") and "Traceback" not in err


def test_tpe_rungs_models_the_longest_rungs_in_a_real_search(tmp_path, cache_dir, monkeypatch):
    import nas_kd.search.loop as loop

    seen = []

    def spy(results):
        scores = real(results)
        seen.append((scores, {r.candidate for r in results if r.rung > 0}))
        return scores

    real = loop.rung_scores
    monkeypatch.setattr(loop, "rung_scores", spy)
    assert _search(tmp_path, cache_dir, "--trials", "13", "--promote-until", "0", "--sampler", "tpe-rungs") == 0
    study, rungs = _studies(tmp_path)
    # TPE modelled (after its 10 random candidates) from scores that put promoted candidates at their longest rung
    assert seen and any(promoted and set(scores) >= promoted for scores, promoted in seen)
    assert len([t for t in study.trials if t.values]) >= 13 and _done(rungs)


def test_the_default_search_trains_each_candidate_in_its_flop_band(tmp_path, cache_dir):
    from nas_kd.search.sampler import band_of, flop_bands
    from nas_kd.search.space import load_space

    assert _search(tmp_path, cache_dir, "--trials", "4", "--promote-until", "0") == 0  # default: stratified
    study, _ = _studies(tmp_path)
    space = load_space("default")
    identity = study.user_attrs["nas_kd.identity"]
    bands = flop_bands(space.cheapest(tuple(identity["input_shape"]), identity["num_classes"])[1], 150_000)
    assert len(bands) >= 2
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert len(trained) == 4
    for t in trained:
        low, high = bands[band_of(t.number, len(bands))]
        assert low < t.user_attrs["flops"] <= high


def test_local_search_changes_one_knob_of_a_top_band_candidate_on_the_top_bands_extra_turns(tmp_path, cache_dir):
    from nas_kd.search.sampler import LOCAL_AFTER, TOP_BAND_TURNS, band_of, flop_bands
    from nas_kd.search.space import load_space

    assert _search(tmp_path, cache_dir, "--trials", "12", "--promote-until", "0", "--sampler", "local") == 0
    study, _ = _studies(tmp_path)
    identity = study.user_attrs["nas_kd.identity"]
    space = load_space("default")
    bands = flop_bands(space.cheapest(tuple(identity["input_shape"]), identity["num_classes"])[1], 150_000)
    count, top = len(bands), len(bands) - 1
    trained = {t.number: t for t in study.trials if t.user_attrs.get("status") == "trained"}
    assert len(trained) == 12 and all(bands[band_of(n, count)][0] < t.user_attrs["flops"] <= bands[band_of(n, count)][1]
                                      for n, t in trained.items())  # every candidate still in its band
    extra = [n for n in trained if n % (count + TOP_BAND_TURNS - 1) >= count]
    changed = []
    for n in extra:
        earlier_top = [t for m, t in trained.items() if m < n and band_of(m, count) == top]
        one_knob = [t.number for t in earlier_top
                    if sum(t.params[k] != v for k, v in trained[n].params.items() if k in t.params) == 1]
        if len(earlier_top) >= LOCAL_AFTER + 1:  # one worker: all but the last were scored when n was asked
            assert one_knob, f"trial {n} is no change of an earlier top-band candidate"
            changed.append(n)
    assert changed  # the search got far enough to change one
    specs = [t.user_attrs["spec_json"] for t in trained.values()]
    assert len(set(specs)) == len(specs)  # a change never repeats a trained architecture
