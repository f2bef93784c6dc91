"""``--recipe dml``: deep mutual learning (Zhang et al. 2018). ``--peers K`` students of the picked
architecture, from different initial weights, train together: each learns from the labels (and the
study's teacher, when there is one) and from the other peers' soft outputs. The peer shipped is the
best on validation; the card gives every peer's accuracy."""

from __future__ import annotations

import torch

from nas_kd.distill.mutual import Peers
from nas_kd.export.schemes import SchemeOutcome, SchemeRun, register_scheme
from nas_kd.model.builder import build_student


@register_scheme("dml")
def mutual_learning(run: SchemeRun) -> SchemeOutcome:
    recipe, k = run.recipe, run.options.peers
    peers = []
    for i in range(k):  # peers differ by their initial weights only
        torch.manual_seed(recipe.settings.seed + 1000 * i)
        peers.append(build_student(recipe.spec))
    model = Peers(peers).to(memory_format=torch.channels_last)
    seconds = run.train(model, f"mutual learning of {k} peers", recipe.targets)
    scored = [run.trained(peer, seconds) for peer in model.peers]
    best = max(range(k), key=lambda i: (scored[i].val_accuracy, -i))
    rows = [{"peer": i + 1, "val_accuracy": s.val_accuracy, "test_accuracy": s.test_accuracy}
            for i, s in enumerate(scored)]
    entry = {"name": "dml", "each_peer": rows, "shipped_peer": best + 1, "trainings": 1,
             "learns_from": "the other peers and the teacher" if recipe.kd.uses_teacher else "the other peers",
             "rule": "peers train together for --epochs (each step costs K students); the best on validation "
                     "is shipped; train seconds are for all peers"}
    return SchemeOutcome(scored[best], entry)
