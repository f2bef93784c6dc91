"""Latency of a student on the CPU that runs the search: exported to ONNX, timed in onnxruntime.

FLOPs are a proxy; a user ships a model to run it, so the search can budget and rank students by
the time one image takes here. The timing rule is fixed and written out (``LATENCY_METHOD``) so a
study and a model card say how their figures were taken. A figure holds only for the machine
(``machine_id``) and thread count it was measured with; ``LatencyCache`` keys on both, so a resumed
study and the workers of one machine measure each spec once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import platform
import re
import sqlite3
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from nas_kd.errors import UserError
from nas_kd.model.spec import ArchSpec

OPSET = 17
WARMUP_RUNS, WARMUP_SECONDS = 10, 0.02  # first runs pay allocation and lazy initialisation
BLOCK_RUNS = 25
MIN_RUNS, MIN_SECONDS = 50, 0.1
MAX_RUNS, MAX_SECONDS = 20_000, 2.0  # the run ceiling only binds below 100 µs a run
SETTLED = 0.02  # the median may move less than this with the last block

LATENCY_METHOD = (
    f"onnxruntime CPU, ONNX opset {OPSET}, batch 1, the stated intra-op threads, no spinning; "
    f"at least {WARMUP_RUNS} warm-up runs and {WARMUP_SECONDS:g} s, then blocks of {BLOCK_RUNS} timed runs "
    f"until the median of all runs moves < {SETTLED:.0%} with a block (at least {MIN_RUNS} runs and "
    f"{MIN_SECONDS:g} s, at most {MAX_RUNS} runs or {MAX_SECONDS:g} s); median µs per image, "
    "spread = interquartile range / median"
)
METHOD_ID = hashlib.sha256(LATENCY_METHOD.encode()).hexdigest()[:12]  # a changed rule is a new cache key


@dataclass(frozen=True)
class Latency:
    """One timing: median µs per image, spread (IQR / median), runs timed and their seconds,
    whether the median settled before a ceiling (``stable``), threads, and whether it came from
    a cache rather than being measured now (``cached``)."""

    median_us: float
    spread: float
    runs: int
    seconds: float
    stable: bool
    threads: int = 1
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(model: nn.Module, example: torch.Tensor, target: Path | str | BinaryIO) -> None:
    """``model`` (in eval mode) as ONNX into ``target``: opset 17, one file, any batch size.
    The one exporter setting for deployed files and for timing, so both time the same graph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notes a user cannot act on
        torch.onnx.export(
            model, (example,), target if isinstance(target, io.IOBase) else str(target), dynamo=False,
            opset_version=OPSET, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )


def ort_session(model: Path | str | bytes, threads: int = 1):  # noqa: ANN201 - an onnxruntime.InferenceSession
    """A CPU session on ``threads`` intra-op threads that do not spin: on a shared machine a
    spinning pool would measure (and steal) idle time, not the model."""
    import onnxruntime as ort  # a heavy import that only timing and checks need

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def time_runs(fn: Callable, x: object, *, threads: int = 1) -> Latency:
    """Time ``fn(x)`` by the rule in ``LATENCY_METHOD``: warm-up, then blocks of runs until the
    median of all runs so far moves < 2% with the last block (within the run and time floors and
    ceilings). ``threads`` is only recorded: the caller set up ``fn`` to use them."""
    start = time.perf_counter()
    warm = 0
    while warm < WARMUP_RUNS or (time.perf_counter() - start < WARMUP_SECONDS and warm < MAX_RUNS):
        fn(x)
        warm += 1
    times: list[float] = []
    timed, median, stable = 0.0, 0.0, False
    while len(times) < MAX_RUNS and timed < MAX_SECONDS:
        for _ in range(BLOCK_RUNS):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        timed = sum(times)
        before, median = median, statistics.median(times)
        if len(times) >= MIN_RUNS and timed >= MIN_SECONDS and abs(median - before) < SETTLED * median:
            stable = True
            break
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Latency(median_us=median * 1e6, spread=(q3 - q1) / median, runs=len(times), seconds=timed,
                   stable=stable, threads=threads)


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], threads: int = 1) -> Latency:
    """Median onnxruntime time of one image of ``input_shape`` (C, H, W) through ``model`` on
    ``threads`` intra-op threads (``LATENCY_METHOD``). Works on a copy in eval mode, in memory;
    the caller's model and torch's thread setting are left as they were."""
    student = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, *input_shape)
    buffer = io.BytesIO()
    export_onnx(student, example, buffer)
    session = ort_session(buffer.getvalue(), threads)
    feed = {"images": example.numpy()}
    return time_runs(lambda f: session.run(None, f), feed, threads=threads)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _onnxruntime_version() -> str:
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    import onnxruntime

    return onnxruntime.__version__


def machine_id() -> dict:
    """What makes two latencies comparable: the CPU model, its logical cores, the onnxruntime version."""
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "onnxruntime": _onnxruntime_version()}


def machine_key(threads: int, machine: dict | None = None) -> str:
    """A short stable name for (machine, thread count): latencies with different keys do not mix."""
    data = {**(machine_id() if machine is None else machine), "threads": threads}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


Measure = Callable[[nn.Module, tuple[int, int, int], int], Latency]
_COLUMNS = ("median_us", "spread", "runs", "seconds", "stable", "threads")
_SCHEMA = """CREATE TABLE IF NOT EXISTS latency (
    spec TEXT NOT NULL, input_shape TEXT NOT NULL, machine_key TEXT NOT NULL, threads INTEGER NOT NULL,
    method TEXT NOT NULL, median_us REAL NOT NULL, spread REAL NOT NULL, runs INTEGER NOT NULL,
    seconds REAL NOT NULL, stable INTEGER NOT NULL, machine TEXT NOT NULL, measured_at TEXT NOT NULL,
    PRIMARY KEY (spec, input_shape, machine_key, threads, method))"""


class LatencyCache:
    """Measured latencies per (spec, input shape, machine key, threads, method) in one SQLite file.

    Several worker processes of one machine share it: WAL journal, a 60 s busy timeout, and the
    first figure stored for a key is the one every worker gets (two workers that measured the same
    spec at once both return the stored one). ``machine`` and ``measure`` are for tests and
    benchmarks: another machine's identity, another way to measure.
    """

    def __init__(self, path: Path | str, *, machine: dict | None = None, measure: Measure = measure_latency) -> None:
        self.path = Path(path).expanduser()
        self.machine = machine_id() if machine is None else machine
        self._measure = measure
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:  # an unusable file fails here, before any training
            db.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=60)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                with db:  # one transaction: committed on success, rolled back on error
                    yield db
            finally:
                db.close()
        except sqlite3.DatabaseError as err:
            raise UserError(
                f"latency cache {self.path} cannot be used ({err}): delete that file "
                "(the latencies in it are measured again)") from None

    def _key(self, spec: ArchSpec, input_shape: tuple[int, int, int], threads: int) -> tuple:
        shape = json.dumps([int(n) for n in input_shape])
        return spec.to_json(), shape, machine_key(threads, self.machine), int(threads), METHOD_ID

    def get(self, spec: ArchSpec, input_shape: tuple[int, int, int], threads: int = 1) -> Latency | None:
        """The stored latency of ``spec`` on this machine and thread count, or None."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM latency WHERE spec = ? AND input_shape = ? "
                "AND machine_key = ? AND threads = ? AND method = ?", self._key(spec, input_shape, threads),
            ).fetchone()
        if row is None:
            return None
        values = dict(zip(_COLUMNS, row, strict=True))
        return Latency(**{**values, "stable": bool(values["stable"])}, cached=True)

    def get_or_measure(self, spec: ArchSpec, model: nn.Module | None, input_shape: tuple[int, int, int],
                       threads: int = 1) -> Latency:
        """The cached latency (``cached=True``), or a new measurement, stored (``cached=False``).
        ``model`` may be None: the student is then built from ``spec``."""
        found = self.get(spec, input_shape, threads)
        if found is not None:
            return found
        if model is None:
            from nas_kd.model.builder import build_student  # the builder imports layers: only when measuring

            model = build_student(spec)
        measured = self._measure(model, input_shape, threads)
        row = (*self._key(spec, input_shape, threads), measured.median_us, measured.spread, measured.runs,
               measured.seconds, int(measured.stable), json.dumps(self.machine, sort_keys=True),
               datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._connect() as db:
            inserted = db.execute(f"INSERT OR IGNORE INTO latency VALUES ({', '.join('?' * len(row))})", row).rowcount
        if inserted:
            return replace(measured, cached=False)
        return self.get(spec, input_shape, threads) or measured  # another worker stored it first


_UNITS = {"us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3, "s": 1e6}  # micro sign and Greek mu both
_DURATION = re.compile(r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[^\d\s.+-]*)\s*$",
                       re.IGNORECASE)
_EXAMPLES = "e.g. 300us, 300µs, 0.3ms, 0.0003s"


def parse_duration(text: str, what: str = "--latency-budget") -> float:
    """Microseconds written in ``text`` with a unit: ``300us``, ``300µs``, ``0.3ms``, ``1.5 ms``,
    ``0.0003s``. A bare number is refused (µs or ms would both be plausible); so are zero,
    negative and unreadable values, each as a UserError with examples."""
    match = _DURATION.match(str(text))
    unit = match["unit"].lower() if match else None
    if match and not unit:
        raise UserError(f"{what} {text!r} has no unit: add us, ms or s, {_EXAMPLES}")
    if unit not in _UNITS:
        raise UserError(f"cannot read {what} {text!r}: write a duration with a unit (us, ms or s), {_EXAMPLES}")
    value = float(match["num"]) * _UNITS[unit]
    if not value > 0:
        raise UserError(f"{what} {text!r} must be more than zero, {_EXAMPLES}")
    return value


def format_duration(us: float) -> str:
    """Short human form of microseconds: '312 µs', '1.25 ms', '2.5 s'."""
    if round(us) < 1000:
        return f"{us:.3g} µs" if us < 100 else f"{us:.0f} µs"
    if us < 999.5e3:
        return f"{us / 1e3:.3g} ms"
    return f"{us / 1e6:.3g} s"
