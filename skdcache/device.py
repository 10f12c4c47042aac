"""Where models run: the device a run asks for, and the autocast dtype used on it."""

from __future__ import annotations

import torch

from skdcache.errors import SkdError


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise SkdError("--device cuda asked but no CUDA device is visible; use --device cpu or auto")
    return torch.device(requested)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None  # CPU autocast is slower than fp32 for these models; keep exact fp32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
