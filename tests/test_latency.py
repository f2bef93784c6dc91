"""Latency: duration budgets as people write them, a real onnxruntime timing of a tiny student, and
the per-spec cache shared by processes on one machine (hits, misses, a corrupt file)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nas_kd.errors import UserError
from nas_kd.model.builder import build_student
from nas_kd.model.latency import (
    BLOCK_RUNS,
    MAX_RUNS,
    MIN_RUNS,
    Latency,
    LatencyCache,
    format_duration,
    machine_id,
    machine_key,
    measure_latency,
    parse_duration,
)
from nas_kd.model.spec import parse_summary

SHAPE = (1, 12, 12)
TINY = parse_summary("stem8/s1 | ds k3 c16 s2 x1 | fc | relu", 1, 4)
OTHER = parse_summary("stem8/s1 | ds k3 c24 s2 x1 | fc | relu", 1, 4)


@pytest.mark.parametrize("text, us", [("300us", 300), ("300µs", 300), ("300μs", 300), ("0.3ms", 300),
                                      ("0.0003s", 300), ("1.5 ms", 1500), ("2MS", 2000), ("1e-3s", 1000)])
def test_parse_duration_reads_units(text, us):
    assert parse_duration(text) == pytest.approx(us)


@pytest.mark.parametrize("text, message", [
    ("300", "'300' has no unit: add us, ms or s"),
    ("0ms", "must be more than zero"),
    ("-1ms", "must be more than zero"),
    ("fast", "cannot read --latency-budget 'fast'"),
    ("3 hours", "cannot read"),
    ("", "cannot read"),
])
def test_parse_duration_refuses_with_examples(text, message):
    with pytest.raises(UserError, match=message) as err:
        parse_duration(text)
    assert "e.g. 300us" in str(err.value)


def test_parse_duration_names_the_flag():
    with pytest.raises(UserError, match="--other-budget"):
        parse_duration("5", what="--other-budget")


def test_format_duration():
    assert [format_duration(us) for us in (312.4, 5.25, 1250, 12_500, 2.5e6)] == [
        "312 µs", "5.25 µs", "1.25 ms", "12.5 ms", "2.5 s"]


def test_measure_latency_times_a_tiny_student_and_leaves_the_caller_as_it_was():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a value the measurement must not reset
    try:
        model = build_student(TINY).train()
        latency = measure_latency(model, SHAPE, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert model.training
    assert latency.median_us > 0 and latency.spread >= 0 and latency.seconds > 0
    assert MIN_RUNS <= latency.runs <= MAX_RUNS and latency.runs % BLOCK_RUNS == 0
    assert latency.threads == 1 and not latency.cached


class Counting:
    """A measuring function that counts its calls and returns a made-up figure per call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, input_shape, threads):
        self.calls += 1
        return Latency(median_us=100.0 * self.calls, spread=0.05, runs=50, seconds=0.1, stable=True, threads=threads)


def test_cache_hit_is_not_measured_again_and_misses_on_threads_machine_or_spec(tmp_path):
    path = tmp_path / "latency.sqlite"
    measure = Counting()
    cache = LatencyCache(path, measure=measure)
    first = cache.get_or_measure(TINY, None, SHAPE, 1)
    again = cache.get_or_measure(TINY, build_student(TINY), SHAPE, 1)
    assert (first.cached, again.cached, measure.calls) == (False, True, 1)
    assert again.median_us == first.median_us == 100.0 and again.stable

    assert not cache.get_or_measure(TINY, None, SHAPE, 2).cached  # another thread count
    assert not cache.get_or_measure(OTHER, None, SHAPE, 1).cached  # another spec
    assert not cache.get_or_measure(TINY, None, (1, 16, 16), 1).cached  # another input shape
    elsewhere = LatencyCache(path, machine={**machine_id(), "cpu": "another CPU"}, measure=measure)
    assert not elsewhere.get_or_measure(TINY, None, SHAPE, 1).cached
    assert measure.calls == 5
    assert machine_key(1) != machine_key(2) and machine_key(1) == machine_key(1, machine_id())


def test_cache_is_shared_with_another_process(tmp_path):
    """A worker process measures for real; this process then gets its figure without measuring."""
    path = tmp_path / "latency.sqlite"
    child = textwrap.dedent(f"""
        import json, sys
        from nas_kd.model.latency import LatencyCache
        from nas_kd.model.spec import ArchSpec
        lat = LatencyCache(sys.argv[1]).get_or_measure(ArchSpec.from_json(sys.argv[2]), None, {SHAPE!r}, 1)
        print(json.dumps(lat.to_dict()))
    """)
    out = subprocess.run([sys.executable, "-c", child, str(path), TINY.to_json()], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    theirs = json.loads(out.stdout)
    assert not theirs["cached"] and theirs["median_us"] > 0
    measure = Counting()
    mine = LatencyCache(path, measure=measure).get_or_measure(TINY, None, SHAPE, 1)
    assert mine.cached and measure.calls == 0 and mine.median_us == theirs["median_us"]


def test_the_first_stored_figure_wins_when_two_workers_measure_at_once(tmp_path):
    path = tmp_path / "latency.sqlite"
    other = LatencyCache(path, measure=lambda m, s, t: Latency(250.0, 0.1, 50, 0.1, True, t))

    def slow(model, input_shape, threads):  # the other worker stores its figure meanwhile
        other.get_or_measure(TINY, None, input_shape, threads)
        return Latency(999.0, 0.1, 50, 0.1, True, threads)

    assert LatencyCache(path, measure=slow).get_or_measure(TINY, None, SHAPE, 1).median_us == 250.0


def test_corrupt_cache_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "latency.sqlite"
    path.write_bytes(b"this is not an SQLite database\n" * 64)
    with pytest.raises(UserError, match="delete that file") as err:
        LatencyCache(path)
    assert str(path) in str(err.value)
