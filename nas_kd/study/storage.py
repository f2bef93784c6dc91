"""The Optuna study behind a search: open or resume it in its storage, check its identity, choose
its sampler, and ask for trials safely when several processes share it.

What a study records is defined in ``nas_kd.study.records``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per SQLite study there
    fcntl = None

from nas_kd.errors import UserError
from nas_kd.study.records import DIRECTIONS, IDENTITY_ATTR
from nas_kd.study.requeue import requeue_stale_design


def redact_url(url: str) -> str:
    """The storage URL with any password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


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
        heartbeat_stale_trial_callback=requeue_stale_design,  # a killed worker's hand design is queued again
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
    if path in ("", ":memory:"):  # nothing another process could share
        yield
        return
    with file_lock(f"{path}.ask-lock"):
        yield


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock among the processes of this machine, held for the block (none on Windows)."""
    if fcntl is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # it names files and folders


def check_study_name(name: str) -> str:
    """``name`` when it may name a study, else UserError saying which names are allowed."""
    if not STUDY_NAME.match(name):
        raise UserError(f"study name {name!r} is not allowed: use letters, digits, '.', '_' "
                        "or '-' (it names files), at most 100 characters")
    return name


def open_named_study(name: str, studies_dir: str, storage: str | None) -> optuna.Study:
    """The study a report or export names: from ``--storage``, or its SQLite file in ``studies_dir``
    (checked first, because Optuna would quietly create an empty database file)."""
    if storage is None:
        path = Path(studies_dir) / f"{name}.db"
        if not path.exists():
            raise UserError(f"no study named {name!r}: {path} does not exist "
                            "(run `python -m nas_kd.search` first, or pass --studies-dir / --storage)")
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
