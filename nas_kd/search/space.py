"""A search space declared as data (YAML), and how an Optuna trial samples a spec from it.

Every knob is either a list (a categorical choice), ``{low, high[, step][, log]}`` (an integer
range) or a single value (fixed). A ``stages`` knob other than ``count`` may instead be a list of
knobs, one per stage position, so choices can grow with depth (narrow stages at high resolution,
wide ones at low). Strides adapt to the input: a stride that would shrink the feature map below
``min_feature_size`` is taken as 1, so one space serves 8×8 to 224×224 inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from nas_kd.errors import UserError
from nas_kd.model.cost import analytic_flops
from nas_kd.model.spec import ACTIVATION_NAMES, BLOCK_TYPES, ArchSpec, StageSpec, parse_summary


def _spaces_dir() -> Path:
    """The declared spaces: inside the installed package (the wheel maps the top-level
    ``search_spaces/`` folder to ``nas_kd/search_spaces``), or beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "search_spaces"
    return installed if installed.is_dir() else package.parent / "search_spaces"


SPACES_DIR = _spaces_dir()

_SCHEMA: dict[str, dict[str, str]] = {
    "stem": {"channels": "channels", "stride": "stride"},
    "stages": {
        "count": "positive", "depth": "positive", "channels": "channels", "kernel": "kernel",
        "stride": "stride", "block": "block", "expansion": "positive", "pointwise_rank": "rank",
    },
    "head": {"channels": "head_channels", "classifier_rank": "rank"},
}
_PARAM_FIELD = {"pointwise_rank": "pw_rank"}  # the Optuna parameter s{i}_pw_rank keeps its short name


@dataclass(frozen=True)
class Knob:
    """One dimension of the space: categorical ``options``, or an integer range."""

    name: str
    options: tuple | None = None
    low: int | None = None
    high: int | None = None
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, param: str) -> Any:
        if self.options is not None:
            if len(self.options) == 1:
                return self.options[0]
            return trial.suggest_categorical(param, list(self.options))
        if self.log:
            return trial.suggest_int(param, self.low, self.high, log=True)
        return trial.suggest_int(param, self.low, self.high, step=self.step)

    def values(self) -> list:
        if self.options is not None:
            return list(self.options)
        return list(range(self.low, self.high + 1, 1 if self.log else self.step))


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space: ``knobs`` are keyed ``section.field`` (``stages.count`` among them), and
    ``stage_knobs`` hold, for each other ``stages`` field, one knob per stage position."""

    name: str
    source: str  # the YAML text, stored in the study so the space can be rebuilt
    knobs: dict[str, Knob]
    stage_knobs: dict[str, tuple[Knob, ...]]
    min_feature_size: int = 2
    warm_start: tuple[tuple[str, str], ...] = ()  # (name, summary line) of hand designs tried first

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def sample(self, trial: optuna.Trial, input_shape: tuple[int, int, int], num_classes: int) -> ArchSpec:
        """Draw one architecture; parameter names are ``stem_*``, ``n_stages``, ``s{i}_*``, ``head_*``."""
        k = self.knobs
        size = min(input_shape[1:])

        def stride(knob: Knob, param: str) -> int:
            nonlocal size
            s = knob.suggest(trial, param)
            if (size - 1) // s + 1 < self.min_feature_size:
                s = 1
            size = (size - 1) // s + 1
            return s

        stem_channels = k["stem.channels"].suggest(trial, "stem_channels")
        stem_stride = stride(k["stem.stride"], "stem_stride")
        stages = []
        for i in range(1, k["stages.count"].suggest(trial, "n_stages") + 1):
            at = {field: knobs[i - 1] for field, knobs in self.stage_knobs.items()}
            block = at["block"].suggest(trial, f"s{i}_block")
            stages.append(StageSpec(
                block=block,
                depth=at["depth"].suggest(trial, f"s{i}_depth"),
                channels=at["channels"].suggest(trial, f"s{i}_channels"),
                kernel=at["kernel"].suggest(trial, f"s{i}_kernel"),
                stride=stride(at["stride"], f"s{i}_stride"),
                expansion=at["expansion"].suggest(trial, f"s{i}_expansion") if block == "ir" else 1,
                pointwise_rank=_rank(at["pointwise_rank"].suggest(trial, f"s{i}_pw_rank")),
            ))
        return ArchSpec(
            in_channels=input_shape[0],
            num_classes=num_classes,
            stem_channels=stem_channels,
            stem_stride=stem_stride,
            stages=tuple(stages),
            head_channels=k["head.channels"].suggest(trial, "head_channels"),
            classifier_rank=_rank(k["head.classifier_rank"].suggest(trial, "classifier_rank")),
            activation=k["activation"].suggest(trial, "activation"),
        )

    def params_for(self, spec: ArchSpec) -> dict[str, Any]:
        """The trial parameters that make ``sample`` return ``spec`` (to enqueue a known design);
        UserError naming the first value the space does not offer."""
        params: dict[str, Any] = {
            "stem_channels": spec.stem_channels, "stem_stride": spec.stem_stride, "n_stages": len(spec.stages),
            "head_channels": spec.head_channels, "classifier_rank": spec.classifier_rank or "full",
            "activation": spec.activation,
        }
        for i, s in enumerate(spec.stages, 1):
            params.update({f"s{i}_block": s.block, f"s{i}_depth": s.depth, f"s{i}_channels": s.channels,
                           f"s{i}_kernel": s.kernel, f"s{i}_stride": s.stride,
                           f"s{i}_pw_rank": s.pointwise_rank or "full"})
            if s.block == "ir":
                params[f"s{i}_expansion"] = s.expansion
        values = self.param_values()
        for name, value in params.items():
            if value not in values.get(name, []):
                raise UserError(f"{spec.summary()!r} is outside search space {self.name!r}: {name} = {value!r} "
                                f"is not one of {values.get(name, [])}")
        return params

    def param_values(self) -> dict[str, list]:
        """Every Optuna parameter the space can ask for, with its possible values."""
        k = self.knobs
        out = {"stem_channels": k["stem.channels"].values(), "stem_stride": k["stem.stride"].values(),
               "n_stages": k["stages.count"].values(), "head_channels": k["head.channels"].values(),
               "classifier_rank": k["head.classifier_rank"].values(), "activation": k["activation"].values()}
        for i in range(1, max(out["n_stages"]) + 1):
            for field, knobs in self.stage_knobs.items():
                out[f"s{i}_{_PARAM_FIELD.get(field, field)}"] = knobs[i - 1].values()
        return out

    def cheapest(self, input_shape: tuple[int, int, int], num_classes: int,
                 measure: Callable[[ArchSpec], int] | None = None) -> tuple[ArchSpec, int]:
        """The least costly member by ``measure`` (default: the analytic FLOP count), found by
        coordinate descent from every knob's minimum."""
        values = self.param_values()
        params = {name: min(v, key=_order) for name, v in values.items()}
        measure = measure or (lambda spec: analytic_flops(spec, input_shape))

        def cost(p: dict) -> int:
            return measure(self.sample(optuna.trial.FixedTrial(p), input_shape, num_classes))

        best = cost(params)
        for _ in range(5):
            improved = False
            for name, options in values.items():
                for value in options:
                    c = cost({**params, name: value})
                    if c < best:
                        best, params, improved = c, {**params, name: value}, True
            if not improved:
                break
        return self.sample(optuna.trial.FixedTrial(params), input_shape, num_classes), best

    def draw(self, rng: np.random.Generator, input_shape: tuple[int, int, int], num_classes: int,
             flops: tuple[float, float] | None = None, tries: int = 20_000) -> dict[str, Any] | None:
        """The parameters of one member drawn at random as Optuna's random sampler draws (each knob
        independently, uniform over its values); with ``flops = (low, high]``, the first of up to
        ``tries`` draws whose analytic FLOPs lie in that range (None if none does): plain random
        draws, restricted to the range."""
        for _ in range(tries):
            trial = _DrawingTrial(rng)
            spec = self.sample(trial, input_shape, num_classes)  # type: ignore[arg-type]
            if flops is None or flops[0] < analytic_flops(spec, input_shape) <= flops[1]:
                return trial.params
        return None

    def mutate(self, rng: np.random.Generator, params: dict[str, Any], input_shape: tuple[int, int, int],
               num_classes: int, flops: tuple[float, float] | None = None, avoid: frozenset[str] = frozenset(),
               tries: int = 500) -> dict[str, Any] | None:
        """The parameters of a member one knob away from ``params`` (a knob it uses, set to another of
        its values), with analytic FLOPs in ``flops = (low, high]`` and an architecture whose JSON is not
        in ``avoid``; None if ``tries`` changes find none. Knobs ``params`` lacks (stages it did not
        have) are drawn at random, as a stage added by the change needs them."""
        values = self.param_values()
        names = sorted(values)
        full = {name: values[name][int(rng.integers(len(values[name])))] for name in names} | params
        parent = self.sample(optuna.trial.FixedTrial(full), input_shape, num_classes)
        for _ in range(tries):
            name = names[int(rng.integers(len(names)))]
            others = [v for v in values[name] if v != full[name]]
            if not others:
                continue
            child = {**full, name: others[int(rng.integers(len(others)))]}
            spec = self.sample(optuna.trial.FixedTrial(child), input_shape, num_classes)
            if spec == parent or spec.to_json() in avoid:  # a knob the parent does not use, or trained already
                continue
            if flops is None or flops[0] < analytic_flops(spec, input_shape) <= flops[1]:
                return child
        return None


def _order(v: Any) -> tuple:
    # "full" rank sorts last; strings (block, activation) keep their declared order via index 0.
    if v == "full":
        return (1, 0)
    return (0, v) if isinstance(v, (int, float)) else (0, 0)


def _rank(v: Any) -> float | None:
    return None if v in ("full", None) else float(v)


def _check_value(path: str, kind: str, v: Any) -> None:
    ok = {
        "channels": lambda: isinstance(v, int) and v >= 1,
        "head_channels": lambda: isinstance(v, int) and v >= 0,
        "positive": lambda: isinstance(v, int) and v >= 1,
        "stride": lambda: v in (1, 2),
        "kernel": lambda: isinstance(v, int) and v >= 1 and v % 2 == 1,
        "block": lambda: v in BLOCK_TYPES,
        "activation": lambda: v in ACTIVATION_NAMES,
        "rank": lambda: v == "full" or (isinstance(v, (int, float)) and 0 < v <= 1),
    }[kind]()
    if not ok:
        hints = {
            "channels": "a whole number ≥ 1", "head_channels": "a whole number ≥ 0 (0 = no head)",
            "positive": "a whole number ≥ 1", "stride": "1 or 2", "kernel": "an odd whole number",
            "block": f"one of {list(BLOCK_TYPES)}", "activation": f"one of {list(ACTIVATION_NAMES)}",
            "rank": "'full' or a fraction in (0, 1]",
        }
        raise UserError(f"{path}: value {v!r} is not allowed; expected {hints[kind]}")


def _knob(path: str, kind: str, raw: Any) -> Knob:
    if isinstance(raw, dict):
        if set(raw) - {"low", "high", "step", "log"} or not {"low", "high"} <= set(raw):
            raise UserError(f"{path}: a range needs 'low' and 'high' (optional 'step', 'log'), got {raw}")
        if not all(isinstance(raw[x], int) for x in ("low", "high")) or raw["low"] > raw["high"]:
            raise UserError(f"{path}: a range needs whole numbers with low ≤ high, got {raw}")
        knob = Knob(path, low=raw["low"], high=raw["high"], step=int(raw.get("step", 1)), log=bool(raw.get("log")))
    else:
        options = tuple(raw) if isinstance(raw, list) else (raw,)
        if not options:
            raise UserError(f"{path}: an empty list leaves nothing to choose")
        knob = Knob(path, options=options)
    for v in knob.values():
        _check_value(path, kind, v)
    return knob


def _section_knobs(raw: dict, origin: str) -> tuple[dict[str, Knob], dict[str, tuple[Knob, ...]]]:
    """The knobs of the stem, stages and head sections; stage fields as one knob per stage position."""
    knobs: dict[str, Knob] = {}
    stage_knobs: dict[str, tuple[Knob, ...]] = {}
    for section, fields in _SCHEMA.items():
        body = raw.get(section)
        if not isinstance(body, dict):
            raise UserError(f"search space {origin}: missing section '{section}' (keys: {', '.join(fields)})")
        extra = set(body) - set(fields)
        if extra:
            raise UserError(f"search space {origin}: unknown key(s) {sorted(extra)} in '{section}'")
        for field, kind in fields.items():  # stages.count comes first: it says how many positions there are
            if field not in body:
                raise UserError(f"search space {origin}: missing '{section}.{field}'")
            path = f"search space {origin}: {section}.{field}"
            if section == "stages" and field != "count":
                stage_knobs[field] = _per_stage(path, kind, body[field], max(knobs["stages.count"].values()))
            else:
                knobs[f"{section}.{field}"] = _knob(path, kind, body[field])
    return knobs, stage_knobs


def _per_stage(path: str, kind: str, raw: Any, positions: int) -> tuple[Knob, ...]:
    """One knob per stage position: a list of ranges or choice lists, one per position; any other
    value is one knob every position shares (a plain list stays a categorical choice)."""
    if not (isinstance(raw, list) and any(isinstance(x, (dict, list)) for x in raw)):
        knob = _knob(path, kind, raw)
        return (knob,) * positions
    for i, x in enumerate(raw, 1):
        if not isinstance(x, (dict, list)):
            raise UserError(f"{path}: a per-stage list gives each stage position a range {{low, high}} or a "
                            f"list of choices, but stage {i} has {x!r} (write [{x}] for a fixed value)")
    if len(raw) != positions:
        raise UserError(f"{path}: {len(raw)} per-stage knobs, but stages.count allows up to {positions} "
                        f"stages; give one per stage position")
    return tuple(_knob(f"{path} (stage {i})", kind, x) for i, x in enumerate(raw, 1))


def parse_space(text: str, *, origin: str = "<space>") -> SearchSpace:
    """Read a space from YAML text; UserError naming the file and the offending key otherwise."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"search space {origin} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise UserError(f"search space {origin} must be a mapping with keys stem, stages, head, activation")
    known = set(_SCHEMA) | {"name", "description", "activation", "min_feature_size", "warm_start"}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"search space {origin}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    knobs, stage_knobs = _section_knobs(raw, origin)
    if "activation" not in raw:
        raise UserError(f"search space {origin}: missing 'activation'")
    knobs["activation"] = _knob(f"search space {origin}: activation", "activation", raw["activation"])
    min_size = raw.get("min_feature_size", 2)
    if not isinstance(min_size, int) or min_size < 1:
        raise UserError(f"search space {origin}: min_feature_size must be a whole number ≥ 1")
    name = str(raw.get("name", Path(origin).stem))
    warm = raw.get("warm_start") or {}
    if not isinstance(warm, dict) or not all(isinstance(v, str) for v in warm.values()):
        raise UserError(f"search space {origin}: warm_start maps a name to an architecture line, e.g. "
                        "'mobilenet: stem16/s1 | ds k3 c24 s2 x2 | fc | relu'")
    space = SearchSpace(name=name, source=text, knobs=knobs, stage_knobs=stage_knobs, min_feature_size=min_size,
                        warm_start=tuple((str(k), v) for k, v in warm.items()))
    for design_name, line in space.warm_start:  # fail now, not when the study starts
        try:
            space.params_for(parse_summary(line, 1, 10))
        except UserError as err:
            raise UserError(f"search space {origin}: warm_start {design_name}: {err}") from None
    return space


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """A space from a YAML file path, or by name from ``search_spaces/``."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"search space {name_or_path!r} not found: give a YAML file path or one of "
            f"{', '.join(available_spaces()) or '(none)'}"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read search space {path}: {err}") from None
    return parse_space(text, origin=str(path))


class _DrawingTrial:
    """Just enough of ``optuna.Trial`` for ``SearchSpace.sample`` to draw from ``rng``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.params = rng, {}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        self.params[name] = choices[int(self.rng.integers(len(choices)))]
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if log:
            value = int(round(float(np.exp(self.rng.uniform(np.log(low - 0.5), np.log(high + 0.5))))))
            value = min(max(value, low), high)
        else:
            value = low + step * int(self.rng.integers((high - low) // step + 1))
        self.params[name] = value
        return value
