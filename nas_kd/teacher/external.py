"""Teachers a user brings: a TorchScript file, an ONNX model (run by onnxruntime, so a teacher
trained in any framework can teach), or ``pkg.module:factory`` with a weights-only state dict.

Each is wrapped as an ``nn.Module`` that takes the split's normalised images (``input="raw"``
undoes the normalisation first, for teachers trained on [0, 1] pixels) and returns logits. It is
checked on arrival: logits shaped [batch, classes] and better-than-chance validation accuracy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas_kd.data import Split, call_factory
from nas_kd.errors import UserError
from nas_kd.files import sha256_file
from nas_kd.model.cost import count_flops
from nas_kd.train import accuracy

TEACHER_INPUTS = ("normalised", "raw")


def is_external(source: str) -> bool:
    """A recipe is a bare name; anything with a path separator, a file suffix or ':' is brought."""
    return any(c in source for c in "/.:")


class _Denormalise(nn.Module):
    def __init__(self, inner: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.std + self.mean)


class OnnxTeacher(nn.Module):
    """An ONNX classifier run by onnxruntime on the CPU (its first input takes N×C×H×W float32)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort  # imported when an ONNX teacher is brought: it takes a while to load

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
            raise UserError(f"cannot load ONNX teacher {path}: {str(err).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.n_params = 0
        try:
            import onnx

            self.n_params = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
        except Exception:  # noqa: BLE001 - the count is informative only
            pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy().astype(np.float32)})
        return torch.from_numpy(np.asarray(out[0]))


def load_external(source: str, weights_file: str | None, *, teacher_input: str,
                  split: Split) -> tuple[nn.Module, dict]:
    """Load, wrap and check a brought teacher; return it with its description (key, sha256, ...)."""
    if teacher_input not in TEACHER_INPUTS:
        raise UserError(f"--teacher-input must be one of {', '.join(TEACHER_INPUTS)}, got {teacher_input!r}")
    path = Path(source)
    if source.endswith(".onnx"):
        _must_exist(path)
        model, kind, digest = OnnxTeacher(path), "onnx", sha256_file(path)
    elif not is_factory(source):
        _must_exist(path)
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception:  # noqa: BLE001 - not TorchScript: say what is accepted
            raise UserError(
                f"teacher {path} is not a TorchScript file (torch.jit.save). Bring an .onnx model, a "
                "TorchScript file, or --teacher pkg.module:factory --teacher-weights STATE_DICT.pt"
            ) from None
        kind, digest = "torchscript", sha256_file(path)
    else:
        model, kind = _from_factory(source, weights_file), "factory"
        digest = hashlib.sha256((source + sha256_file(Path(weights_file))).encode()).hexdigest()
    model.eval()
    if teacher_input == "raw":
        norm = split.description["normalisation"]
        model = _Denormalise(model, norm["mean"], norm["std"]).eval()
    _check_output(model, source, split)
    params = getattr(model, "n_params", None) or sum(p.numel() for p in model.parameters())
    flops = None
    if kind == "factory":  # a plain nn.Module: fvcore counts it like our own teachers
        try:
            flops = count_flops(model, split.input_shape)
        except Exception:  # noqa: BLE001 - informative only
            flops = None
    name = Path(source.split(":")[0]).name if kind != "factory" else source.replace(":", "-")
    info = {"key": f"{kind}-{name}-{digest[:12]}"[:120], "kind": kind, "source": source, "sha256": digest,
            "input": teacher_input, "params": int(params), "flops": flops, "arch": {"arch": kind, "source": source}}
    return model, info


def is_factory(source: str) -> bool:
    """``pkg.module:function`` (a file path that happens to contain ':' is a file)."""
    module, _, attr = source.partition(":")
    return bool(attr) and "/" not in module and not Path(source).is_file()


def _must_exist(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"teacher file {path} does not exist")


def _from_factory(source: str, weights_file: str | None) -> nn.Module:
    model = call_factory(source, "teacher")
    if not isinstance(model, nn.Module):
        raise UserError(f"teacher factory {source} must return an nn.Module, got {type(model).__name__}")
    if weights_file is None:
        raise UserError(f"teacher factory {source} needs --teacher-weights FILE (a state dict saved with torch.save)")
    _must_exist(Path(weights_file))
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickles that are not plain tensors are refused here
        raise UserError(f"cannot load {weights_file} with weights_only=True (a state dict of tensors is needed; "
                        f"nas_kd never unpickles code): {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(f"{weights_file} does not fit {source}: {str(err).splitlines()[0]}") from None
    return model


def _check_output(model: nn.Module, source: str, split: Split) -> None:
    x = split.x_val[:4]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - any failure on our input is the same user problem
        raise UserError(f"teacher {source} fails on input {tuple(x.shape)}: {str(err).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), split.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"teacher {source} outputs {shape} for input {tuple(x.shape)}; expected logits "
                        f"[batch, {split.num_classes}] for this dataset's {split.num_classes} classes")
    acc = accuracy(model, split.x_val, split.y_val)
    if acc <= 1.0 / split.num_classes:
        raise UserError(f"teacher {source} reaches {acc:.1%} on the validation split, no better than chance "
                        f"({1 / split.num_classes:.1%}): wrong dataset, class order, or input scaling "
                        "(--teacher-input raw if it was trained on [0, 1] pixels)?")
