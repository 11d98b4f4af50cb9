"""The device a scan runs on and the float arithmetic it uses there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def arithmetic(precision: str, device: torch.device) -> Iterator[None]:
    """Float32 arithmetic for the block: ``exact`` turns TF32 off on CUDA (cuDNN convolutions use it by default,
    and it changes predictions), ``tf32`` turns it on, ``bf16`` autocasts to bfloat16. Restored afterwards."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    mode = "tf32" if precision == "tf32" else "ieee"
    try:
        if device.type == "cuda":
            matmul.fp32_precision, conv.fp32_precision = mode, mode
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        if device.type == "cuda":
            matmul.fp32_precision, conv.fp32_precision = saved


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    return dev
