"""A run's settings written back as command-line flags: one table, read two ways.

``recorded_flags`` is what the study keeps (flag -> value text, shown by the report);
``command_line`` is how local workers are started with the parent's settings. The storage URL
appears only with its password hidden: workers get the real one from the environment.
"""

from __future__ import annotations

from nas_kd.quantity import format_quantity, parse_quantity
from nas_kd.search.config import SearchConfig
from nas_kd.study.storage import redact_url

FlagValue = str | tuple[str, ...] | bool | None  # text | repeated flag | switch | not given


def flag_values(cfg: SearchConfig) -> dict[str, FlagValue]:
    """Every flag of ``python -m nas_kd.search`` (in ``--help`` order) with the value ``cfg`` holds."""
    c, t, kd = cfg, cfg.train, cfg.kd
    return {
        "--budget": _quantity(c.budget_flops) + "FLOPs",
        "--params": _quantity(c.budget_params) if c.budget_params else None,
        "--memory-budget": f"{c.budget_memory}B" if c.budget_memory else None,
        "--size-budget": f"{c.budget_size}B" if c.budget_size else None,
        "--latency-budget": f"{_number(c.budget_latency_us)}us" if c.budget_latency_us else None,
        "--objective": c.objective,
        "--latency-threads": str(c.latency_threads),
        "--dataset": c.dataset,
        "--data-dir": c.data_dir,
        "--space": c.space,
        "--trials": str(c.trials),
        "--timeout": _number(c.timeout),
        "--promote-until": _number(c.promote_until),
        "--tail": c.tail,
        "--study-name": c.name,
        "--storage": redact_url(c.storage_url),
        "--studies-dir": c.studies_dir,
        "--sampler": c.sampler,
        "--no-warm-start": not c.warm_start,
        "--rungs": str(c.rungs),
        "--eta": str(c.eta),
        "--no-early-stop": not c.early_stop,
        "--seed": str(c.seed),
        "--epochs": _number(t.epochs),
        "--min-steps": str(c.min_steps),
        "--train-subset": str(c.train_subset or 0),
        "--val-size": _number(c.val_size),
        "--split-seed": str(c.split_seed),
        "--batch-size": str(t.batch_size),
        "--lr": _number(t.lr),
        "--kd": kd.loss,
        "--temperature": _number(kd.temperature),
        "--alpha": _number(kd.alpha),
        "--self-distill": c.self_distill,
        "--teacher": c.teachers,
        "--teacher-weights": c.teacher_files,
        "--teacher-input": c.teacher_input,
        "--ensemble-weights": ",".join(map(_number, c.teacher_weights)) if c.teacher_weights else None,
        "--teacher-seed": str(c.teacher_seed),
        "--cache-dir": c.cache_dir,
        "--device": c.device,
        "--threads": str(c.training_threads),
        "--workers": str(c.workers),
    }


def recorded_flags(cfg: SearchConfig) -> dict[str, str]:
    """Flag -> value text, for people: a switch is "yes" or "no", a flag not given is "none"."""
    return {flag: _text(value) for flag, value in flag_values(cfg).items()}


def command_line(values: dict[str, FlagValue]) -> list[str]:
    """The arguments that give these values: a repeated flag once per value, a switch when on."""
    args: list[str] = []
    for flag, value in values.items():
        if value is True:
            args.append(flag)
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, item]
        elif isinstance(value, str):
            args += [flag, value]
    return args


def _text(value: FlagValue) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return "none" if value is None else value


def _quantity(count: int) -> str:
    """``5M`` when that reads back as exactly ``count``, else the plain number."""
    short = format_quantity(count)
    return short if parse_quantity(short) == count else str(count)


def _number(value: float | None) -> str | None:
    """A float as the shortest text that reads back as it (2.0 -> "2")."""
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else repr(float(value))
