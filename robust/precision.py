"""Numeric precision of attacks and evaluation: fp32 (the reference), tf32 or bf16.

- fp32: IEEE float32 everywhere; on CUDA, TF32 is switched off for matmuls and convolutions
  (PyTorch allows it for convolutions by default), so GPU numbers are the reference numbers.
- tf32: float32 tensors, TF32 tensor-core matmuls and convolutions on CUDA (a no-op on CPU).
- bf16: autocast to bfloat16 on the victim's device type (CUDA and CPU), TF32 for what
  autocast leaves in float32. Safe here because every loss and every similarity the suite
  ranks by is computed on `.float()` embeddings, and pixels, gradients' signs and the L-inf
  projection stay float32.

Convolutional encoders are also switched to channels-last on CUDA under tf32/bf16, where
tensor cores want it; fp32 keeps the default layout so it stays bit-for-bit the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import torch

from robust.errors import RobustError

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "check_precision", "precision_scope", "prepare_model"]

PRECISIONS: Final[tuple[str, ...]] = ("fp32", "bf16", "tf32")
DEFAULT_PRECISION: Final[str] = "fp32"


def check_precision(precision: str) -> str:
    """`precision` if it is known, else one error line listing the choices."""
    if precision not in PRECISIONS:
        raise RobustError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@contextmanager
def _fp32_precision(mode: str) -> Iterator[None]:
    """Set the float32 matmul/convolution mode ("ieee" or "tf32") of CUDA, then restore it."""
    if not torch.backends.cuda.is_built():  # a CPU-only build: nothing to switch
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = conv.fp32_precision = mode
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


@contextmanager
def precision_scope(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed model calls at `precision` on `device` (see the module docstring)."""
    check_precision(precision)
    device_type = torch.device(device).type
    with _fp32_precision("ieee" if precision == "fp32" else "tf32"):
        if precision == "bf16":
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                yield
        else:
            yield


def prepare_model(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model in the memory layout that suits `precision` on its device (in place)."""
    check_precision(precision)
    parameter = next(model.parameters(), None)
    on_cuda = parameter is not None and parameter.device.type == "cuda"
    if on_cuda and precision != "fp32":
        model.to(memory_format=torch.channels_last)
    return model
