"""A weight-sharing supernet over a search space (once-for-all, Cai et al. 2020; BigNAS, Yu et al. 2020).

One set of weights holds every full-rank member of a space that uses one activation: each layer
is stored at the largest size the space allows, and a member uses the leading slice of it (its
first ``c`` channels, the centre ``k×k`` of the depthwise kernel, the first ``d`` blocks of a
stage). ``forward(x, spec)`` runs a member on those slices, so training one member trains the
weights it shares with every other; ``extract(spec)`` copies a member out as a plain ``Student``
that trains, counts and exports like any other. Ranking members by their inherited weights costs
inference, not training: the screen a random first rung cannot afford.

What is shared and what is not:
- stem, and per stage position and block index, one depthwise-separable and one inverted-residual
  slot (the two kinds hold different layers, so they keep separate weights);
- the 1×1 head and the classifier, one per possible last stage position (a 2-stage member's last
  features are not a 4-stage member's);
- batch norm affine parameters are sliced like the convs; running statistics are not kept (the
  supernet trains on batch statistics), so an extracted member recalibrates them
  (``recalibrate_bn``) before it is evaluated.
- low-rank pointwise convs and a second activation are outside it (``Supernet.check``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.model.builder import Student, build_student
from nas_kd.model.layers import ACTIVATIONS
from nas_kd.model.spec import ArchSpec, StageSpec
from nas_kd.search.space import SearchSpace


@dataclass(frozen=True)
class SupernetShape:
    """The largest size of every layer: what the space's knobs allow at each position."""

    in_channels: int
    num_classes: int
    activation: str
    stem_channels: int
    stage_channels: tuple[int, ...]  # per stage position
    stage_depth: tuple[int, ...]
    kernel: int
    expansion: int
    head_channels: int
    first_last_stage: int  # fewest stages a member has (its last stage position, counted from 1)

    @classmethod
    def of(cls, space: SearchSpace, in_channels: int, num_classes: int, activation: str = "relu") -> SupernetShape:
        values = space.param_values()
        positions = max(values["n_stages"])
        return cls(
            in_channels, num_classes, activation, max(values["stem_channels"]),
            tuple(max(values[f"s{i}_channels"]) for i in range(1, positions + 1)),
            tuple(max(values[f"s{i}_depth"]) for i in range(1, positions + 1)),
            max(max(values[f"s{i}_kernel"]) for i in range(1, positions + 1)),
            max(max(values[f"s{i}_expansion"]) for i in range(1, positions + 1)),
            max(values["head_channels"]), min(values["n_stages"]),
        )

    def block_inputs(self, position: int, index: int) -> int:
        """The widest input of block ``index`` in stage ``position`` (0-based)."""
        if index > 0:
            return self.stage_channels[position]
        return self.stem_channels if position == 0 else self.stage_channels[position - 1]


class _ConvBn(nn.Module):
    """A full-size conv and its batch norm; ``run`` uses the leading slice of both."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, depthwise: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cout if depthwise else cin, cout, kernel, padding=kernel // 2,
                              groups=cout if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, track_running_stats=False)  # members recalibrate their own
        self.depthwise = depthwise

    def weight(self, cin: int, cout: int, kernel: int) -> torch.Tensor:
        w = self.conv.weight
        cut = (w.shape[-1] - kernel) // 2
        w = w[:, :, cut : cut + kernel, cut : cut + kernel] if cut else w
        return w[:cout] if self.depthwise else w[:cout, :cin]

    def run(self, x: torch.Tensor, cout: int, kernel: int = 1, stride: int = 1) -> torch.Tensor:
        cin = x.shape[1]
        w = self.weight(cin, cout, kernel)
        x = F.conv2d(x, w, None, stride, kernel // 2, 1, cout if self.depthwise else 1)
        return F.batch_norm(x, None, None, self.bn.weight[:cout], self.bn.bias[:cout], True, 0.0, self.bn.eps)

    def copy_to(self, layer: nn.Sequential) -> None:
        """Into a student's conv → batch norm (→ activation) layer: this layer's slice of its size."""
        conv, bn = layer[0], layer[1]
        kernel, cout = conv.kernel_size[0], conv.out_channels
        conv.weight.copy_(self.weight(conv.in_channels, cout, kernel))
        bn.weight.copy_(self.bn.weight[:cout])
        bn.bias.copy_(self.bn.bias[:cout])


class _DsSlot(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.dw, self.pw = _ConvBn(cin, cin, kernel, depthwise=True), _ConvBn(cin, cout)


class _IrSlot(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand, self.dw, self.project = _ConvBn(cin, mid), _ConvBn(mid, mid, kernel, True), _ConvBn(mid, cout)


class Supernet(nn.Module):
    """Every member's weights at once; see the module docstring."""

    def __init__(self, shape: SupernetShape) -> None:
        super().__init__()
        self.shape = shape
        self.act = ACTIVATIONS[shape.activation]()
        self.stem = _ConvBn(shape.in_channels, shape.stem_channels, 3)
        self.ds, self.ir = nn.ModuleList(), nn.ModuleList()
        for p, (channels, depth) in enumerate(zip(shape.stage_channels, shape.stage_depth, strict=True)):
            ins = [shape.block_inputs(p, b) for b in range(depth)]
            self.ds.append(nn.ModuleList(_DsSlot(cin, channels, shape.kernel) for cin in ins))
            self.ir.append(nn.ModuleList(_IrSlot(cin, channels, shape.kernel, shape.expansion) for cin in ins))
        last = range(shape.first_last_stage - 1, len(shape.stage_channels))
        self.heads = nn.ModuleDict({str(p): _ConvBn(shape.stage_channels[p], shape.head_channels) for p in last})
        self.classifiers = nn.ModuleDict({
            f"{p}-{head}": nn.Linear(shape.head_channels if head else shape.stage_channels[p], shape.num_classes)
            for p in last for head in (0, 1)})

    def check(self, spec: ArchSpec) -> None:
        """ValueError unless ``spec`` is a member (one the supernet's weights hold)."""
        s, why = self.shape, None
        if spec.activation != s.activation or spec.in_channels != s.in_channels or spec.num_classes != s.num_classes:
            why = f"the supernet is {s.activation}, {s.in_channels} input channels, {s.num_classes} classes"
        elif spec.classifier_rank is not None or any(st.pointwise_rank is not None for st in spec.stages):
            why = "low-rank layers are not shared"
        elif not s.first_last_stage <= len(spec.stages) <= len(s.stage_channels):
            why = f"{len(spec.stages)} stages"
        elif spec.stem_channels > s.stem_channels or spec.head_channels > s.head_channels:
            why = "stem or head too wide"
        elif any(st.channels > s.stage_channels[p] or st.depth > s.stage_depth[p] or st.kernel > s.kernel
                 or st.expansion > s.expansion for p, st in enumerate(spec.stages)):
            why = "a stage is larger than the supernet's"
        if why:
            raise ValueError(f"{spec.summary()} is not a member of this supernet: {why}")

    def forward(self, x: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """``spec``'s logits on the shared weights (batch statistics in batch norm)."""
        x = self.act(self.stem.run(x, spec.stem_channels, 3, spec.stem_stride))
        for p, stage in enumerate(spec.stages):
            for b in range(stage.depth):
                x = self._block(x, p, b, stage, stage.stride if b == 0 else 1)
        head, fc = self._tail(spec)
        if head is not None:
            x = self.act(head.run(x, spec.head_channels))
        x = x.mean((2, 3))
        return F.linear(x, fc.weight[:, : x.shape[1]], fc.bias)

    def _tail(self, spec: ArchSpec) -> tuple[_ConvBn | None, nn.Linear]:
        """The head (None without one) and classifier after ``spec``'s last stage."""
        p = str(len(spec.stages) - 1)
        return (self.heads[p] if spec.head_channels else None), self.classifiers[f"{p}-{int(bool(spec.head_channels))}"]

    def _block(self, x: torch.Tensor, p: int, b: int, stage: StageSpec, stride: int) -> torch.Tensor:
        cin, k = x.shape[1], stage.kernel
        if stage.block == "ds":
            slot = self.ds[p][b]
            out = self.act(slot.pw.run(self.act(slot.dw.run(x, cin, k, stride)), stage.channels))
        else:
            slot, mid = self.ir[p][b], cin * stage.expansion
            h = self.act(slot.expand.run(x, mid)) if stage.expansion != 1 else x
            out = slot.project.run(self.act(slot.dw.run(h, mid, k, stride)), stage.channels)
        return out + x if stride == 1 and cin == stage.channels else out

    @torch.no_grad()
    def extract(self, spec: ArchSpec) -> Student:
        """``spec`` as a plain ``Student`` holding its slices of the shared weights (batch norm
        statistics unset: ``recalibrate_bn`` before evaluating it)."""
        self.check(spec)
        student = build_student(spec)
        self.stem.copy_to(student.stem)
        for p, stage in enumerate(spec.stages):
            for b, block in enumerate(student.stages[p]):
                slot = (self.ds if stage.block == "ds" else self.ir)[p][b]
                for name, shared in slot.named_children():  # a slot's layers are named as the block's
                    if not isinstance(layer := getattr(block, name), nn.Identity):  # ir1 has no expand
                        shared.copy_to(layer)
        head, fc = self._tail(spec)
        if head is not None:
            head.copy_to(student.head)
        student.classifier.weight.copy_(fc.weight[:, : student.classifier.in_features])
        student.classifier.bias.copy_(fc.bias)
        return student


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every batch norm's running statistics and re-estimate them as plain averages over
    ``batches`` (BigNAS: an extracted member's own statistics, not the supernet's mixture)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()
