"""The search settings of an older study as the command-line flags that set them.

A search records ``flags`` (CLI flag -> value text) with the study it creates, and the report shows
them as they are. Studies made before that recorded only the settings' field names (``config``);
this table turns those back into flags, so every report speaks the language a user typed.
"""

from __future__ import annotations

from collections.abc import Callable

from nas_kd.quantity import format_quantity, parse_quantity

NOT_GIVEN = "none"  # as the search records a flag it was not given


def _text(value: object) -> str:
    """The search's way of writing a value: switches yes/no, 2.0 as "2", repeated flags comma-joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or NOT_GIVEN
    return NOT_GIVEN if value is None else str(value)


def _count(value: object) -> str:
    """``150k`` when that reads back as exactly the count, else the plain number."""
    if not isinstance(value, int):
        return _text(value)
    short = format_quantity(value)
    return short if parse_quantity(short) == value else str(value)


def _flops(value: object) -> str:
    return _count(value) + "FLOPs" if isinstance(value, int) else _text(value)


def _negated(value: object) -> str:  # a --no-X flag is given when the setting is off
    return _text(not value) if isinstance(value, bool) else _text(value)


def _comma_list(value: object) -> str:
    return ",".join(_text(v) for v in value) if isinstance(value, (list, tuple)) and value else _text(value)


def _all_when_none(value: object) -> str:  # --train-subset 0 means every training image
    return "0" if value is None else _text(value)


# (dotted field of SearchConfig.to_dict(), flag, how the field's value reads as the flag's value),
# in the order of ``python -m nas_kd.search --help``. Fields without a flag are left out.
FLAG_OF_FIELD: tuple[tuple[str, str, Callable[[object], str]], ...] = (
    ("budget_flops", "--budget", _flops),
    ("budget_params", "--params", _count),
    ("budget_memory", "--memory-budget", _text),
    ("budget_size", "--size-budget", _text),
    ("budget_latency_us", "--latency-budget", _text),
    ("objective", "--objective", _text),
    ("latency_threads", "--latency-threads", _text),
    ("dataset", "--dataset", _text),
    ("data_dir", "--data-dir", _text),
    ("space", "--space", _text),
    ("trials", "--trials", _text),
    ("timeout", "--timeout", _text),
    ("study_name", "--study-name", _text),
    ("storage", "--storage", _text),
    ("studies_dir", "--studies-dir", _text),
    ("sampler", "--sampler", _text),
    ("warm_start", "--no-warm-start", _negated),
    ("early_stop", "--no-early-stop", _negated),
    ("seed", "--seed", _text),
    ("train.epochs", "--epochs", _text),
    ("min_steps", "--min-steps", _text),
    ("train_subset", "--train-subset", _all_when_none),
    ("val_size", "--val-size", _text),
    ("split_seed", "--split-seed", _text),
    ("train.batch_size", "--batch-size", _text),
    ("train.lr", "--lr", _text),
    ("kd.loss", "--kd", _text),
    ("kd.temperature", "--temperature", _text),
    ("kd.alpha", "--alpha", _text),
    ("teachers", "--teacher", _text),
    ("teacher_files", "--teacher-weights", _text),
    ("teacher_input", "--teacher-input", _text),
    ("teacher_weights", "--ensemble-weights", _comma_list),
    ("teacher_seed", "--teacher-seed", _text),
    ("cache_dir", "--cache-dir", _text),
    ("device", "--device", _text),
    ("threads", "--threads", _text),
    ("workers", "--workers", _text),
)

_MISSING = object()


def _field(config: dict, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def flags_of_config(config: dict) -> dict[str, str]:
    """CLI flag -> value text for every recorded field that a flag sets (fields missing are skipped)."""
    flags = {}
    for dotted, flag, text in FLAG_OF_FIELD:
        value = _field(config, dotted)
        if value is not _MISSING:
            flags[flag] = text(value)
    return flags
