"""A student architecture as plain data: a frozen spec that round-trips through JSON exactly.

A spec is everything needed to rebuild a student (``nas_kd.model.builder.build_student``); it is stored
with every trial and every export. Its one-line ``summary`` reads like timm's block strings::

    stem16/s1 | ds k3 c24 s2 x2 | ir4 k5 c48 s2 x3 pw.5 | head128 | fc.25 | relu

Tokens: ``ds`` depthwise-separable, ``irE`` inverted residual with expansion E; ``kK`` kernel;
``cC`` output channels; ``sS`` stride of the stage's first block; ``xN`` depth; ``pwF`` pointwise
convs factorised to rank F·min(in, out); ``headC`` a 1×1 conv before pooling; ``fcF`` a low-rank
classifier of rank F·min(in, classes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from nas_kd.errors import UserError

BLOCK_TYPES = ("ds", "ir")
ACTIVATION_NAMES = ("relu", "relu6", "hardswish", "silu")


@dataclass(frozen=True)
class StageSpec:
    """``depth`` identical blocks; only the first one strides and changes the channel count."""

    block: str
    depth: int
    channels: int
    kernel: int
    stride: int
    expansion: int = 1
    pointwise_rank: float | None = None

    def summary(self) -> str:
        name = "ds" if self.block == "ds" else f"ir{self.expansion}"
        rank = "" if self.pointwise_rank is None else f" pw{_frac(self.pointwise_rank)}"
        return f"{name} k{self.kernel} c{self.channels} s{self.stride} x{self.depth}{rank}"


@dataclass(frozen=True)
class ArchSpec:
    """A whole student: stem conv, stages of blocks, optional 1×1 head, pooling, classifier."""

    in_channels: int
    num_classes: int
    stem_channels: int
    stem_stride: int
    stages: tuple[StageSpec, ...]
    head_channels: int = 0
    classifier_rank: float | None = None
    activation: str = "relu"

    def __post_init__(self) -> None:
        _check(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        try:
            top = _only_known(cls, d)
            top["stages"] = tuple(StageSpec(**_only_known(StageSpec, s)) for s in d["stages"])
            return cls(**top)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"invalid architecture spec: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise UserError(f"invalid architecture spec JSON: {err}") from None

    def summary(self) -> str:
        parts = [f"stem{self.stem_channels}/s{self.stem_stride}"]
        parts += [s.summary() for s in self.stages]
        if self.head_channels:
            parts.append(f"head{self.head_channels}")
        parts.append("fc" if self.classifier_rank is None else f"fc{_frac(self.classifier_rank)}")
        parts.append(self.activation)
        return " | ".join(parts)


def parse_summary(text: str, in_channels: int, num_classes: int) -> ArchSpec:
    """The spec a ``summary`` line describes (the inverse of ``ArchSpec.summary``)."""
    tokens = [t.strip() for t in text.split("|")]
    try:
        stem, *body, fc, activation = tokens
        channels, stride = stem.removeprefix("stem").split("/s")
        head = int(body.pop().removeprefix("head")) if body and body[-1].startswith("head") else 0
        stages = []
        for stage in body:
            kind, k, c, s, x, *rank = stage.split()
            stages.append(StageSpec(
                block="ds" if kind == "ds" else "ir", depth=int(x[1:]), channels=int(c[1:]), kernel=int(k[1:]),
                stride=int(s[1:]), expansion=1 if kind == "ds" else int(kind[2:]),
                pointwise_rank=float(rank[0][2:]) if rank else None,
            ))
        spec = ArchSpec(in_channels, num_classes, int(channels), int(stride), tuple(stages), head,
                        float(fc[2:]) if fc != "fc" else None, activation)
    except ValueError as err:
        raise UserError(f"cannot read architecture {text!r} (like 'stem16/s1 | ds k3 c24 s2 x2 | fc | relu'): "
                        f"{err}") from None
    return spec


def low_rank(fraction: float | None, n_in: int, n_out: int) -> int | None:
    """The rank a fraction stands for (None means full rank)."""
    if fraction is None:
        return None
    return max(1, int(fraction * min(n_in, n_out) + 0.5))


def _frac(x: float) -> str:
    return f"{x:g}".lstrip("0") if x < 1 else f"{x:g}"


def _only_known(cls: type, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)} for {cls.__name__}")
    return {k: v for k, v in d.items() if k in names}


def _check(spec: ArchSpec) -> None:
    if spec.activation not in ACTIVATION_NAMES:
        raise ValueError(f"activation {spec.activation!r} not in {ACTIVATION_NAMES}")
    if not spec.stages:
        raise ValueError("a spec needs at least one stage")
    for s in spec.stages:
        if s.block not in BLOCK_TYPES:
            raise ValueError(f"block {s.block!r} not in {BLOCK_TYPES}")
        if s.kernel % 2 != 1 or s.depth < 1 or s.channels < 1 or s.stride not in (1, 2):
            raise ValueError(f"bad stage {s}: odd kernel, depth ≥ 1, channels ≥ 1, stride 1 or 2")
        if s.pointwise_rank is not None and not 0 < s.pointwise_rank <= 1:
            raise ValueError(f"pointwise_rank {s.pointwise_rank} must be in (0, 1]")
    if spec.classifier_rank is not None and not 0 < spec.classifier_rank <= 1:
        raise ValueError(f"classifier_rank {spec.classifier_rank} must be in (0, 1]")
