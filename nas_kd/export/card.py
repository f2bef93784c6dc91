"""The model card of an export: what the student is, how it was trained, what it costs and scores,
as JSON (for programs) and Markdown (for people)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from nas_kd.export.retrain import Recipe, Trained
from nas_kd.files import write_json, write_text
from nas_kd.model.cost import FLOP_CONVENTION, count_cost, count_thop
from nas_kd.model.memory import MEMORY_CONVENTION, count_footprint
from nas_kd.model.spec import ArchSpec
from nas_kd.study.records import TrialRecord


def model_card(study_name: str, record: TrialRecord, recipe: Recipe, student: Trained) -> dict:
    """The card's entries known once the KD student is trained (deployables and ablation add theirs)."""
    spec, split, kd = recipe.spec, recipe.split, recipe.kd
    cost = count_cost(student.model, split.input_shape)
    return {
        "trial": record.number, "study": study_name, "architecture": spec.summary(), "spec": spec.to_dict(),
        "dataset": split.description,
        "flops": cost.flops, "flops_thop": count_thop(student.model, split.input_shape), "params": cost.params,
        "flop_convention": FLOP_CONVENTION + "; thop's count (beside it) also counts batch norm",
        "search_val_accuracy": record.val_accuracy,
        "val_accuracy": student.val_accuracy,
        "test_accuracy": student.test_accuracy,
        "teacher": recipe.teacher, "kd": asdict(kd), "kd_loss": kd.describe(), "training": asdict(recipe.settings),
        "kd_targets": recipe.kd_targets if kd.uses_teacher else None,
        "train_seconds": round(student.seconds, 3),
        "int8_footprint": footprint_entry(spec, split.input_shape),
    }


def footprint_entry(spec: ArchSpec, input_shape: tuple[int, int, int]) -> dict:
    """What a microcontroller must hold at int8 (nas_kd.model.memory), as the search budgets it."""
    f = count_footprint(spec, input_shape)
    return {"peak_memory_bytes": f.peak_memory, "peak_layer": f.peak_layer, "model_size_bytes": f.model_size,
            "convention": MEMORY_CONVENTION}


def ablation_entry(card: dict, labels_only: Trained) -> dict:
    """The card's ``ablation``: the labels-only student beside the KD one."""
    return {
        "labels_only_test_accuracy": labels_only.test_accuracy,
        "labels_only_val_accuracy": labels_only.val_accuracy,
        "labels_only_train_seconds": round(labels_only.seconds, 3),
        "kd_gain_points": round(100 * (card["test_accuracy"] - labels_only.test_accuracy), 2),
    }


def machine_entry() -> dict:
    """Where the latency and training time were measured."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}


def write_card(card: dict, folder: Path) -> None:
    write_json(folder / "model_card.json", card, sort_keys=True)
    write_text(folder / "model_card.md", model_card_markdown(card))


def model_card_markdown(card: dict) -> str:
    """The card as a Markdown page: a table of the figures, then how to load the files."""
    d, lat = card["dataset"], card["latency_us_per_image"]
    teacher = card["teacher"]
    lines = [
        f"# Student: {card['architecture']}",
        "",
        f"From study `{card['study']}`, trial {card['trial']}; retrained with `{card['kd_loss']}` for "
        f"{card['training']['epochs']:g} epochs, augmentation {card['training']['augment']}"
        + (f", teacher targets {card['kd_targets']}" if card.get("kd_targets") else "")
        + f", seed {card['training']['seed']} ({card['train_seconds']:.0f} s on this CPU).",
        "",
        "| | |", "|---|---|",
        f"| dataset | {d['dataset']}, input {tuple(d['input_shape'])}, {d['num_classes']} classes |",
        f"| split | train {d['train_size']}, validation {d['val_size']} (carved from train, seed {d['split_seed']}), "
        f"test {d['test_size']} |",
        f"| FLOPs | {card['flops']:,} (fvcore); thop: {card['flops_thop']:,} |",
        f"| parameters | {card['params']:,} |",
        *([f"| int8 footprint | peak activation memory {fp['peak_memory_bytes']:,} B ({fp['peak_layer']}), "
           f"model size {fp['model_size_bytes']:,} B |"] if (fp := card.get("int8_footprint")) else []),
        f"| validation accuracy | {card['val_accuracy']:.2%} (search proxy: {card['search_val_accuracy']:.2%}) |",
        f"| **test accuracy** | **{card['test_accuracy']:.2%}** |",
    ]
    if "ablation" in card:
        a = card["ablation"]
        lines.append(f"| labels only, same epochs and seed | {a['labels_only_test_accuracy']:.2%} test "
                     f"(KD gain {a['kd_gain_points']:+.2f} points) |")
    lines += [
        f"| teacher | {teacher['key']}: test {teacher['test_accuracy']:.2%}, "
        + (f"{teacher['flops']:,} FLOPs |" if teacher.get("flops") else "FLOPs not counted (brought teacher) |")
        if teacher else "| teacher | none (labels only) |",
        f"| latency per image (1 thread, batch 1) | PyTorch {lat['pytorch']:.0f} µs, "
        f"onnxruntime {lat['onnxruntime']:.0f} µs |",
        f"| ONNX vs PyTorch | max abs diff {card['onnx_max_abs_diff']:.1e} on {card['check_batch']} images |",
        *(int8_rows(card["int8"]) if "int8" in card else []),
        *(recipe_rows(card["recipe"]) if card.get("recipe", {}).get("name", "kd") != "kd" else []),
        *(screening_rows(card["screening"]) if "screening" in card else []),
        "", f"FLOP convention: {card['flop_convention']}.", "",
        "Files: `spec.json` (architecture), `weights.safetensors`, `model.ts` (TorchScript), `model.onnx`"
        + (f", `{card['int8']['path']}` (int8)." if "int8" in card else "."),
        "Load in Python: `nas_kd.load_student(folder)`.", "",
    ]
    return "\n".join(lines)


def screening_rows(s: dict) -> list[str]:
    """The Markdown rows of ``--screen``: each candidate's search and screening validation accuracy."""
    return [f"| screening | the {len(s['candidates'])} best trials, {s['epochs']:g} epochs each; the highest "
            f"{s['chosen_by']} is shipped |",
            *(f"| trial {c['trial']}{' (shipped)' if c['trial'] == s['chosen_trial'] else ''} | "
              f"{c['flops']:,} FLOPs; val {c['search_val_accuracy']:.2%} in the search, "
              f"{c['screen_val_accuracy']:.2%} screened ({c['train_seconds']:.0f} s) |" for c in s["candidates"])]


def recipe_rows(r: dict) -> list[str]:
    """The Markdown rows of a distillation recipe other than plain KD: what each training reached."""
    if r["name"] == "ban":
        rows = [f"| generation {g['generation']} (from {g['learns_from']}) | {g['test_accuracy']:.2%} test, "
                f"{g['val_accuracy']:.2%} val, {g['train_seconds']:.0f} s |" for g in r["each_generation"]]
        e = r["ensemble"]
        return [f"| recipe | born-again networks, {r['generations']} generations; generation "
                f"{r['shipped_generation']} shipped ({r['rule']}) |", *rows,
                f"| ensemble of the generations | {e['test_accuracy']:.2%} test, {e['val_accuracy']:.2%} val |"]
    if r["name"] == "dml":
        return [f"| recipe | deep mutual learning, {r['peers']} peers learning from {r['learns_from']}; "
                f"peer {r['shipped_peer']} shipped ({r['rule']}) |",
                *(f"| peer {p['peer']} | {p['test_accuracy']:.2%} test, {p['val_accuracy']:.2%} val |"
                  for p in r["each_peer"])]
    if r["name"] == "takd":
        a = r["assistant"]
        return ["| recipe | teacher-assistant KD: teacher → assistant → student |",
                f"| teacher assistant | {a['architecture']}, {a['flops']:,} FLOPs (×{a['width_multiplier']:g} "
                f"channels: {a['rule']}); {a['test_accuracy']:.2%} test, {a['val_accuracy']:.2%} val"
                + (" (from the cache)" if a["from_cache"] else f", {a['train_seconds']:.0f} s") + " |"]
    if r["name"] == "self":
        rows = ["| recipe | self-distillation: an exit after every stage learns from the last exit"
                + ("; the exits are shipped |" if r["exits_kept"] else "; the exits are dropped, the plain student "
                   "is shipped |"),
                *(f"| exit {e['exit']} (after stage {e['after_stage']}) | {e['test_accuracy']:.2%} test, "
                  f"{e['val_accuracy']:.2%} val |" for e in r["each_exit"])]
        if "early_exit" in r:
            t = r["early_exit"]
            rows += ["", "Early exit: an image is answered by the first exit whose top probability exceeds the "
                     f"threshold. FLOPs: {t['flops_method']}; latency: {t['latency_method']}.", "",
                     "| threshold | test accuracy | mean FLOPs per image | share per exit | latency per image |",
                     "|---|---|---|---|---|",
                     *(f"| {row['threshold']:g} | {row['test_accuracy']:.2%} | {row['mean_flops']:,} "
                       f"({row['mean_flops'] / t['student_flops']:.0%} of the student without exits) | "
                       f"{' / '.join(f'{x:.0%}' for x in row['exit_share'])} | {row['latency_us_per_image']:.0f} µs |"
                       for row in t["thresholds"]), ""]
        return rows
    return [f"| recipe | {r['name']} |"]


def int8_rows(q: dict) -> list[str]:
    """The Markdown table rows of the card's ``int8`` entry: int8 beside fp32, both in onnxruntime."""
    val, test, lat, size = q["val_accuracy"], q["test_accuracy"], q["latency_us_per_image"], q["bytes"]
    cal = q["calibration"]
    rows = [
        f"| int8 (`{q['path']}`) | {q['method']}; {q['scheme']}; calibrated on {cal['images']} training images "
        f"(seed {cal['seed']}) |",
        f"| **int8 test accuracy** | **{test['int8']:.2%}** vs fp32 {test['fp32']:.2%} in onnxruntime "
        f"({0.0 - q['test_drop_points']:+.2f} points) |",
        f"| int8 validation accuracy | {val['int8']:.2%} vs fp32 {val['fp32']:.2%} ({0.0 - q['val_drop_points']:+.2f} "
        f"points; allowed drop {q['max_drop_points']:g}) |",
        f"| int8 latency (onnxruntime, 1 thread, batch 1) | {lat['int8']:.0f} µs vs fp32 {lat['fp32']:.0f} µs "
        f"({lat['ratio']:.2f}×) |",
        f"| int8 file size | {size[q['path']]:,} bytes vs fp32 {size['model.onnx']:,} "
        f"({size[q['path']] / size['model.onnx']:.2f}×) |",
        f"| int8 agreement with fp32 | {q['agreement']:.1%} equal top-1 on {q['check_batch']} validation images |",
    ]
    if q["qat"]:
        rows.append(f"| quantization-aware training | post-training static lost "
                    f"{q['post_training_val_drop_points']:.2f} points on validation; after "
                    f"{q['qat']['epochs']:g} epochs of KD fine-tuning with fake "
                    f"quantization the loss was {q['qat']['val_drop_points']:.2f}; the int8 file agrees with "
                    f"PyTorch's fake-quantized model on {q['qat']['agreement_with_fake_quant']:.1%} of the check "
                    "batch |")
    if not q["within_max_drop"]:
        rows.append(f"| **int8 misses the allowed drop** | it loses {q['val_drop_points']:.2f} points of validation "
                    f"accuracy, more than {q['max_drop_points']:g}"
                    + (", even after quantization-aware training |" if q["qat"] else " |"))
    return rows
