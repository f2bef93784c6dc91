"""The Optuna study behind a search: create or resume it, record its settings, read its trials.

The study alone is enough to rebuild any candidate: every trial stores its spec, cost, accuracy,
training time and status as user attributes, and the study stores the run's identity (dataset,
split, space, budgets, training and KD settings, teacher fingerprint) and the FLOP convention.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per SQLite study there
    fcntl = None

from nas_kd.errors import UserError
from nas_kd.study.pareto import pareto_front

DIRECTIONS = ("maximize", "minimize")  # validation accuracy, FLOPs
IDENTITY_ATTR = "nas_kd.identity"


def redact_url(url: str) -> str:
    """The storage URL with any password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The samplers a user can choose; all of them honour trial constraints (FLOPs, params)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=10
    )


# A RUNNING trial whose worker is silent for the grace period is failed by the next worker that
# asks for a trial (or by the next run). Tests shorten both through the environment.
HEARTBEAT_SECONDS = int(os.environ.get("NAS_KD_HEARTBEAT_SECONDS", "20"))
GRACE_SECONDS = int(os.environ.get("NAS_KD_GRACE_SECONDS", "90"))
SQLITE_LOCK_TIMEOUT = float(os.environ.get("NAS_KD_SQLITE_TIMEOUT", "60"))


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    """RDB URLs get heartbeats (so a killed worker's trial does not stay RUNNING) and, for SQLite,
    a generous lock timeout so several local workers can share one file."""
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        return url
    engine_kwargs = (
        {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    )
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
    )


# Two processes creating the schema of one fresh database at once (workers starting together, or a
# report opened while a search starts) race on CREATE TABLE / the alembic version row; the loser
# only has to retry, because by then the winner has finished the schema.
_SCHEMA_RACE = ("already exists", "unique constraint failed: alembic_version", "duplicate key value")


def _create_or_load(name: str, storage: str, attempts: int = 5) -> optuna.Study:
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=name, storage=make_storage(storage), directions=list(DIRECTIONS), load_if_exists=True
            )
        except Exception as err:  # noqa: BLE001 - re-raised unless it is the schema race
            if attempt == attempts - 1 or not any(m in str(err).lower() for m in _SCHEMA_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(name: str, storage: str) -> optuna.Study:
    """Create the study, or load it when it exists (to resume). UserError if storage is unusable."""
    try:
        return _create_or_load(name, storage)
    except ValueError as err:
        if "direction" in str(err).lower():
            raise UserError(f"study {name!r} exists in {redact_url(storage)} but is not a nas_kd study") from None
        raise UserError(f"cannot open study {name!r} in {redact_url(storage)}: {err}") from None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy/driver errors: unreachable, locked, corrupt
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, ImportError):
            reason += " (PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install pymysql)"
        raise UserError(
            f"cannot open study storage {redact_url(storage)}: {redact_url(reason)}"
        ) from None


def ask_trial(study: optuna.Study, storage: str) -> optuna.Trial:
    """``study.ask()``, safe when several processes share one SQLite file.

    Optuna pops an enqueued (warm-start) trial by reading it as WAITING, then marking it RUNNING;
    PostgreSQL locks the row in between (SELECT ... FOR UPDATE), SQLite ignores that, so two
    workers could both pop, and train, the same trial (and the second one's tell fails). A file
    lock around the pop makes it atomic among processes on the machine that holds the file."""
    with _sqlite_ask_lock(storage):
        return study.ask()


@contextlib.contextmanager
def _sqlite_ask_lock(storage: str) -> Iterator[None]:
    path = storage.removeprefix("sqlite:///") if storage.startswith("sqlite:///") else ""
    if path in ("", ":memory:") or fcntl is None:  # nothing another process could share
        yield
        return
    with open(f"{path}.ask-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_named_study(name: str, studies_dir: str, storage: str | None) -> optuna.Study:
    """The study a report or export names: from ``--storage``, or its SQLite file in ``studies_dir``
    (checked first, because Optuna would quietly create an empty database file)."""
    if storage is None:
        path = Path(studies_dir) / f"{name}.db"
        if not path.exists():
            raise UserError(f"no study named {name!r}: {path} does not exist "
                            "(run nas_kd.search.cli first, or pass --studies-dir / --storage)")
        storage = f"sqlite:///{path}"
    return load_existing_study(name, storage)


def load_existing_study(name: str, storage: str) -> optuna.Study:
    """Load a study that must already exist (report, export)."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {name!r} in {redact_url(storage)}") from None
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot open study storage {redact_url(storage)}: {err}") from None


def check_identity(study: optuna.Study, identity: dict) -> None:
    """Record ``identity`` on a new study; on a resumed one, refuse if any recorded entry differs."""
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None:
        study.set_user_attr(IDENTITY_ATTR, identity)
        return
    changed = [k for k in identity if k in recorded and _canon(recorded[k]) != _canon(identity[k])]
    if changed:
        details = "; ".join(f"{k}: study has {_short(recorded[k])}, now {_short(identity[k])}" for k in changed)
        raise UserError(
            f"study {study.study_name!r} was run with other settings ({details}). Resume it with its "
            "original settings, or pass a new --study-name"
        )
    missing = {k: v for k, v in identity.items() if k not in recorded}
    if missing:
        study.set_user_attr(IDENTITY_ATTR, {**recorded, **missing})


def _canon(v: object) -> str:
    return json.dumps(v, sort_keys=True)


def _short(v: object) -> str:
    text = _canon(v)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the rest of nas_kd sees it (plain data, no Optuna types)."""

    number: int
    state: str  # COMPLETE / FAIL / RUNNING / ...
    status: str  # trained / infeasible / duplicate / failed / running
    val_accuracy: float | None
    flops: int | None
    params: int | None
    train_seconds: float | None
    summary: str
    spec: dict | None
    feasible: bool
    fail_reason: str | None = None
    kd: dict | None = None  # this trial's distillation recipe under --kd search

    @property
    def kd_text(self) -> str:
        if not self.kd:
            return ""
        k = self.kd
        return f"{k['loss']} T={k['temperature']:g} a={k['alpha']:.2f}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def to_record(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    if t.state == TrialState.FAIL and "status" not in a:  # failed by another worker's stale-trial check
        a = {**a, "status": "failed", "fail_reason": "its worker stopped (no heartbeat): killed or crashed"}
    feasible = all(v <= 0 for v in (t.constraints or {}).values()) if t.constraints else a.get("status") != "infeasible"
    has_result = t.state == TrialState.COMPLETE and a.get("status") in ("trained", "duplicate")
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        status=a.get("status", "running" if t.state == TrialState.RUNNING else t.state.name.lower()),
        val_accuracy=t.values[0] if has_result else None,
        flops=a.get("flops"),
        params=a.get("params"),
        train_seconds=a.get("train_seconds"),
        summary=a.get("summary", ""),
        spec=a.get("spec"),
        feasible=feasible,
        fail_reason=a.get("fail_reason"),
        kd=a.get("kd"),
    )


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [to_record(t) for t in study.get_trials(deepcopy=False)]


def front_records(records: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible trained trials on the Pareto front of (validation accuracy ↑, FLOPs ↓), cheapest first."""
    done = [r for r in records if r.val_accuracy is not None and r.feasible and r.status == "trained"]
    return [done[i] for i in pareto_front([(r.val_accuracy, r.flops) for r in done])]


def write_front(records: list[TrialRecord], out_dir: Path) -> tuple[Path, Path]:
    """Write the front as CSV and JSON (atomically) into ``out_dir``."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in records]
    csv_path, json_path = out_dir / "front.csv", out_dir / "front.json"
    table = pd.DataFrame(rows, columns=list(TrialRecord.__dataclass_fields__))
    table = table.drop(columns=["spec", "kd"]).assign(
        kd=[r.kd_text for r in records], spec=[json.dumps(r["spec"], sort_keys=True) for r in rows])
    tmp = csv_path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(json_path)
    return csv_path, json_path
