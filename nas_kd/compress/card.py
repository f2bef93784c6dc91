"""The pruned student's model card: export's card (cost, accuracies, teacher, latency, files) with
the pruning added: where it started, the method, and every step of the schedule."""

from __future__ import annotations

from pathlib import Path

from nas_kd.compress.prune import METHOD
from nas_kd.compress.schedule import Plan
from nas_kd.compress.shapes import PRUNED_SHAPES
from nas_kd.export.card import model_card_markdown
from nas_kd.files import write_json, write_text
from nas_kd.quantity import format_quantity


def pruning_entry(plan: Plan, start: dict, schedule: list[dict]) -> dict:
    """The card's ``pruning``: the budget, the method, the start and each step."""
    return {"to": plan.to, "steps": plan.steps, "finetune_epochs": plan.finetune_epochs, "method": METHOD,
            "start": start, "schedule": schedule,
            "total_epochs": start["epochs"] + plan.steps * plan.finetune_epochs,
            "shapes_file": PRUNED_SHAPES}


def write_pruned_card(card: dict, folder: Path) -> None:
    write_json(folder / "model_card.json", card, sort_keys=True)
    write_text(folder / "model_card.md", model_card_markdown(card) + pruning_markdown(card["pruning"]))


def pruning_markdown(p: dict) -> str:
    """The card's pruning section: how, from what, and a table of the steps."""
    s = p["start"]
    start = ("trained here" if s["from"] == "trained here" else f"the export `{s['folder']}`")
    lines = [
        "", "## Pruning", "",
        f"Pruned to at most {format_quantity(p['to'])} FLOPs in {p['steps']} step(s), each fine-tuned "
        f"{p['finetune_epochs']:g} epoch(s) with the same KD recipe ({p['total_epochs']:g} epochs in all). "
        f"Method: {p['method']}.", "",
        f"Start: {start}, {s['epochs']:g} epochs: {s['flops']:,} FLOPs, {s['params']:,} parameters, "
        f"validation {s['val_accuracy']:.2%}, test {s['test_accuracy']:.2%}.", "",
        "| step | FLOPs before | FLOPs after | parameters after | channels cut | val pruned | val fine-tuned "
        "| epochs | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['step']} | {r['flops_before']:,} | {r['flops_after']:,} | {r['params_after']:,} | "
              f"{r['channel_fraction_cut']:.1%} | {r['val_accuracy_pruned']:.2%} | {r['val_accuracy']:.2%} | "
              f"{r['epochs']:g} | {r['train_seconds']:.0f} |" for r in p["schedule"]]
    lines += ["", f"`spec.json` is the architecture before pruning; `{p['shapes_file']}` gives every conv, batch "
              "norm and linear layer's shape after it. `nas_kd.load_student(folder)` rebuilds the pruned network.", ""]
    return "\n".join(lines)
