"""Structured channel pruning of a student with torch-pruning: whole channels are removed, so the
result is a smaller dense network that runs faster anywhere, not a sparse one.

torch-pruning's DependencyGraph finds which channels are coupled (a residual connection ties the
channels of every block it joins, a depthwise conv's channels are its input's, a low-rank 1×1 pair
shares its rank channels, the classifier reads the last conv's channels) and removes each coupled
group's channels together. Which channels go: the lowest group L2 magnitude (the L2 norm of a
channel's weights over every layer of its group, batch norm included), the same fraction of every
group. Not BN-scale importance: batch-norm scales rank channels only after training with a
sparsity penalty on them (network slimming), which our KD recipe does not add."""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from nas_kd.errors import UserError
from nas_kd.model.cost import count_flops
from nas_kd.quantity import format_quantity

MIN_CHANNELS = 2  # every coupled group keeps this many channels (torch-pruning's own floor is 1)
BISECTIONS = 10  # halvings of the pruning fraction per step: 1/1024, under one channel in a group of 1000
METHOD = (f"torch-pruning {tp.__version__} DependencyGraph, structured (whole channels); importance: group L2 "
          f"magnitude; the same fraction of every coupled channel group, at least {MIN_CHANNELS} channels kept")


def prune_channels(model: nn.Module, input_shape: tuple[int, ...], fraction: float) -> nn.Module:
    """``model`` pruned in place: from every coupled channel group of n channels, the ``int(n * fraction)``
    least important go, but at least ``MIN_CHANNELS`` stay. The logits layer keeps its outputs."""
    was_training = model.training
    model.eval()  # tracing runs a forward pass, which must not move batch-norm statistics
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    cuts = []  # chosen first, applied after: the groups are disjoint, so one cut leaves the others' indices valid
    for group in graph.get_all_groups(ignored_layers=[_logit_layer(model)], root_module_types=[nn.Conv2d, nn.Linear]):
        scores = importance(group)
        n = len(scores)
        drop = min(int(n * fraction), n - min(n, MIN_CHANNELS))
        if drop > 0:
            root = group[0].dep
            cuts.append((root.target.module, root.handler, torch.argsort(scores, stable=True)[:drop].tolist()))
    for module, handler, idxs in cuts:
        graph.get_pruning_group(module, handler, idxs).prune()
    model.train(was_training)
    return model


def prune_to(model: nn.Module, input_shape: tuple[int, ...], target: int) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` whose fvcore count is at most ``target``, by the smallest fraction
    (found by bisection) that gets there, and that fraction. ``target`` must be reachable."""
    def pruned(fraction: float) -> nn.Module:
        return prune_channels(copy.deepcopy(model), input_shape, fraction)

    low, high = 0.0, 1.0  # invariant: pruning by `high` fits the target, by `low` does not
    best = pruned(high)
    if count_flops(best, input_shape) > target:
        raise RuntimeError(f"pruning cannot reach {target} FLOPs (check_reachable first)")
    for _ in range(BISECTIONS):
        mid = (low + high) / 2
        candidate = pruned(mid)
        if count_flops(candidate, input_shape) <= target:
            high, best = mid, candidate
        else:
            low = mid
    return best, high


def check_reachable(model: nn.Module, input_shape: tuple[int, ...], to: int) -> int:
    """The fewest FLOPs pruning reaches from ``model`` (every group at ``MIN_CHANNELS``).

    Raises UserError when ``to`` is below it."""
    lowest = count_flops(prune_channels(copy.deepcopy(model), input_shape, 1.0), input_shape)
    if to < lowest:
        raise UserError(f"--to {format_quantity(to)} FLOPs cannot be reached by pruning: the lowest it reaches is "
                        f"{format_quantity(lowest)} ({lowest:,}) FLOPs, every layer kept at {MIN_CHANNELS} channels")
    return lowest


def _logit_layer(model: nn.Module) -> nn.Module:
    """The layer whose outputs are the classes (a Student's classifier, or its low-rank pair's second half)."""
    classifier = model.classifier
    return classifier if isinstance(classifier, nn.Linear) else classifier.expand
