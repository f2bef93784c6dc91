"""Microcontroller footprint of a student at int8, counted from its spec before any training.

Two figures, as μNAS and MCUNet budget them:

- **Peak activation memory**: layer by layer, the bytes that must be live at once (the layer's
  input and output buffers, plus a residual block's input while the block runs, since the add needs
  it at the end); the largest such sum over the network. One byte per value (int8), the input image
  included. Batch norm and activations are fused into the conv before them and the residual add is
  computed in place, so they add no buffer.
- **Model size**: one byte per conv and linear weight (int8) and four per bias (int32), where batch
  norm folds into one bias per output channel. Quantisation scales are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_kd.model.spec import ArchSpec, low_rank

MEMORY_CONVENTION = (
    "int8: peak activation memory = the largest sum, over the layer sequence, of each layer's input "
    "and output buffers plus the input a residual block keeps for its add (1 byte a value, the image "
    "included; batch norm and activations fused, residual adds in place); model size = 1 byte a conv or "
    "linear weight + 4 bytes a bias (batch norm folded into one bias a channel), scales not counted"
)


@dataclass(frozen=True)
class Footprint:
    peak_memory: int  # bytes of activations live at once, at the worst layer
    peak_layer: str  # where that is, e.g. "stage 1 block 0 pointwise"
    model_size: int  # bytes of int8 weights and int32 biases


def count_footprint(spec: ArchSpec, input_shape: tuple[int, int, int]) -> Footprint:
    """The int8 peak activation memory and model size of ``spec`` at ``input_shape`` (C, H, W)."""
    walk = walk_spec(spec, input_shape)
    return Footprint(peak_memory=walk.peak, peak_layer=walk.peak_layer, model_size=walk.weights)


def walk_spec(spec: ArchSpec, input_shape: tuple[int, int, int]) -> SpecWalk:
    """Every conv and linear layer of ``spec``'s network in order, as the builder makes them, without
    building it: what the analytic FLOP count and the footprint are both read from."""
    walk = SpecWalk(input_shape)
    walk.conv("stem", spec.stem_channels, 3, spec.stem_stride)
    for s, st in enumerate(spec.stages):
        for b in range(st.depth):
            where, stride, cin = f"stage {s} block {b}", st.stride if b == 0 else 1, walk.c
            skip = walk.size() if stride == 1 and cin == st.channels else 0
            # the block's first layer reads the kept input itself: it is held apart only after that
            if st.block == "ds":
                walk.conv(f"{where} depthwise", cin, st.kernel, stride, groups=cin)
                walk.pointwise(f"{where} pointwise", st.channels, st.pointwise_rank, held=skip)
            else:
                expands = st.expansion != 1
                if expands:
                    walk.pointwise(f"{where} expand", cin * st.expansion, st.pointwise_rank, held=0)
                walk.conv(f"{where} depthwise", walk.c, st.kernel, stride, groups=walk.c,
                          held=skip if expands else 0)
                walk.pointwise(f"{where} project", st.channels, st.pointwise_rank, held=skip)
    if spec.head_channels:
        walk.conv("head", spec.head_channels, 1, 1)
    walk.pool()
    walk.linear("classifier", spec.num_classes, spec.classifier_rank)
    return walk


class SpecWalk:
    """The activation tensor's shape as the layers go by, the worst live sum seen, the weights and
    multiply-adds counted."""

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        self.c, self.h, self.w = input_shape
        self.peak, self.peak_layer, self.weights, self.macs = 0, "", 0, 0

    def size(self) -> int:
        return self.c * self.h * self.w

    def _live(self, layer: str, n_in: int, held: int) -> None:
        total = n_in + self.size() + held
        if total > self.peak:
            self.peak, self.peak_layer = total, layer

    def conv(self, layer: str, cout: int, k: int, stride: int, *, groups: int = 1, held: int = 0) -> None:
        """A k×k conv (odd kernel, "same" padding) with its folded batch norm."""
        n_in, cin = self.size(), self.c
        self.c, self.h, self.w = cout, (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
        self.weights += cout * (cin // groups) * k * k + 4 * cout
        self.macs += cout * (cin // groups) * k * k * self.h * self.w
        self._live(layer, n_in, held)

    def pointwise(self, layer: str, cout: int, fraction: float | None, *, held: int) -> None:
        """A 1×1 conv, full or factorised through ``rank`` channels (only the second factor has the
        batch norm, so only it gets a bias)."""
        rank = low_rank(fraction, self.c, cout)
        if rank is not None:
            n_in, cin = self.size(), self.c
            self.c = rank
            self.weights += rank * cin
            self.macs += rank * cin * self.h * self.w
            self._live(f"{layer} (reduce)", n_in, held)
        self.conv(layer, cout, 1, 1, held=held)

    def pool(self) -> None:
        n_in = self.size()
        self.h = self.w = 1
        self._live("pool", n_in, 0)

    def linear(self, layer: str, n_out: int, fraction: float | None) -> None:
        rank = low_rank(fraction, self.c, n_out)
        if rank is not None:  # the first factor has no bias (LowRankLinear)
            n_in, self.c = self.c, rank
            self.weights += rank * n_in
            self.macs += rank * n_in
            self._live(f"{layer} (reduce)", n_in, 0)
        n_in, self.c = self.c, n_out
        self.weights += n_out * n_in + 4 * n_out
        self.macs += n_out * n_in
        self._live(layer, n_in, 0)
