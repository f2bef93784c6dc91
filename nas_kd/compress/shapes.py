"""The shape of every Conv2d, BatchNorm2d and Linear layer of a pruned student, saved beside its
weights, and the student rebuilt from them: a pruned network's layer widths differ from its spec's,
so the spec alone no longer describes it."""

from __future__ import annotations

from torch import nn

from nas_kd.errors import UserError

PRUNED_SHAPES = "pruned_shapes.json"  # in an export folder: module name -> that layer's shape


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Module name -> type and channels (Conv2d: in, out, groups; BatchNorm2d: features; Linear: in, out)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                            "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"type": "BatchNorm2d", "num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
    return shapes


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> nn.Module:
    """``model`` (built from the spec before pruning) with each layer named in ``shapes`` replaced by a
    fresh one of the saved shape; kernel, stride, padding, bias and batch-norm settings stay the
    original layer's, which pruning does not change. The result takes the pruned weights.

    Raises UserError when ``shapes`` names other layers than the model has (another architecture)."""
    layers = dict(model.named_modules())
    shaped = {name for name, m in layers.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}
    if set(shapes) != shaped:
        raise UserError(f"{PRUNED_SHAPES} does not match spec.json's architecture: layers "
                        f"{sorted(set(shapes) ^ shaped)[:4]} are in one but not the other")
    for name, shape in shapes.items():
        old = layers[name]
        if type(old).__name__ != shape.get("type"):
            raise UserError(f"{PRUNED_SHAPES}: layer {name} is a {type(old).__name__}, not a {shape.get('type')}")
        parent, _, attr = name.rpartition(".")
        setattr(layers[parent] if parent else model, attr, _resized(old, shape))
    return model


def _resized(old: nn.Module, s: dict) -> nn.Module:
    try:
        if isinstance(old, nn.Conv2d):
            return nn.Conv2d(s["in_channels"], s["out_channels"], old.kernel_size, old.stride, old.padding,
                             old.dilation, s["groups"], bias=old.bias is not None, padding_mode=old.padding_mode)
        if isinstance(old, nn.BatchNorm2d):
            return nn.BatchNorm2d(s["num_features"], old.eps, old.momentum, old.affine, old.track_running_stats)
        return nn.Linear(s["in_features"], s["out_features"], bias=old.bias is not None)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{PRUNED_SHAPES}: unreadable shape {s}: {err}") from None
