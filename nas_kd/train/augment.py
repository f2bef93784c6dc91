"""Image augmentation of a whole batch at once, every random draw taken from the caller's generator."""

from __future__ import annotations

import math

import torch

AUGMENTATIONS = ("none", "crop", "crop-flip", "crop-flip-erase")


def augment_batch(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Per-sample random crop after zero-padding by 2, horizontal flip, random erasing; whole batch at once."""
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {mode!r}: choose one of {AUGMENTATIONS}")
    n, _, h, w = x.shape
    pad = 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).view(n, 1, 1)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).view(n, 1, 1)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    if mode == "crop-flip":
        flip = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1)
        cols = torch.where(flip, cols.flip(-1), cols)
    batch_idx = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    out = padded.permute(0, 2, 3, 1)[batch_idx.to(x.device), rows.to(x.device), cols.to(x.device)]
    out = out.permute(0, 3, 1, 2).contiguous()
    return random_erase(out, g) if mode.endswith("erase") else out


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Zhong et al. 2020: with probability p, set a random rectangle (2–33% of the area) to 0 (the mean)."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.02, 0.33, generator=g) * h * w
    log_ratio = torch.empty(n).uniform_(math.log(0.3), math.log(3.3), generator=g)
    eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    on = torch.rand(n, generator=g) < p
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    mask = ((rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
            & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1)) & on.view(n, 1, 1))
    return x.masked_fill(mask.unsqueeze(1).to(x.device), 0.0)
