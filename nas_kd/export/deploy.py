"""The deployable files of an export: spec, weights (safetensors), TorchScript and ONNX, each
runtime checked against PyTorch on real images, and the latency of one image on one thread."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from nas_kd.files import atomic_path, write_json
from nas_kd.model.latency import LATENCY_METHOD, export_onnx, ort_session, time_runs
from nas_kd.model.spec import ArchSpec

ONNX_TOLERANCE = 1e-4  # max |logit difference| an exported runtime may show against PyTorch


def write_deployables(model: nn.Module, spec: ArchSpec, batch: torch.Tensor, folder: Path) -> dict:
    """spec.json, weights.safetensors, model.ts, model.onnx in ``folder``; both runtimes must give
    PyTorch's logits on ``batch``. Returns the model card's entries for the checks and latency."""
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    write_json(folder / "spec.json", spec.to_dict(), sort_keys=True)
    _save_weights(model, folder / "weights.safetensors")
    with torch.inference_mode():
        expected = model(batch).numpy()
    _save_runtimes(model, batch[:1], folder)
    ts_diff = float(np.abs(torch.jit.load(str(folder / "model.ts"))(batch).detach().numpy() - expected).max())
    session = onnx_session(folder / "model.onnx")
    onnx_diff = float(np.abs(session.run(None, {"images": batch.numpy()})[0] - expected).max())
    if not onnx_diff <= ONNX_TOLERANCE or not ts_diff <= ONNX_TOLERANCE:
        raise RuntimeError(
            f"exported model disagrees with PyTorch: ONNX max |diff| {onnx_diff:.2e}, TorchScript {ts_diff:.2e} "
            f"(tolerance {ONNX_TOLERANCE:g})"
        )
    return {"onnx_max_abs_diff": onnx_diff, "torchscript_max_abs_diff": ts_diff, "check_batch": len(batch),
            "latency_us_per_image": _latency(model, session, batch[:1])}


def _save_weights(model: nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)


def _save_runtimes(model: nn.Module, example: torch.Tensor, folder: Path) -> None:
    """TorchScript (traced) and ONNX (opset 17, any batch size) of ``model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes a user cannot act on
        with atomic_path(folder / "model.ts") as tmp:
            torch.jit.trace(model, example).save(str(tmp))
    with atomic_path(folder / "model.onnx") as tmp:
        export_onnx(model, example, tmp)  # the graph the search's latency timed


def onnx_session(path: Path):  # noqa: ANN201 - an onnxruntime.InferenceSession
    """A CPU session on one thread that does not spin: latency measured alone, not against idle threads."""
    return ort_session(path, threads=1)


def _latency(model: nn.Module, session, one: torch.Tensor) -> dict:  # noqa: ANN001 - an InferenceSession
    """Median time per image, batch 1, one thread, in PyTorch and onnxruntime (``time_runs``'s rule)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            torch_us = time_runs(model, one).median_us
    finally:
        torch.set_num_threads(threads)
    onnx_us = time_runs(lambda x: session.run(None, {"images": x}), one.numpy()).median_us
    return {"pytorch": round(torch_us, 1), "onnxruntime": round(onnx_us, 1), "threads": 1, "batch": 1,
            "statistic": LATENCY_METHOD}
