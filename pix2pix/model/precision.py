"""Numeric precision and CPU threads, chosen the same way for training and translation."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from pix2pix.errors import ConfigError

PRECISIONS = ("bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AMX (Sapphire Rapids and later) or AVX512-BF16. Without them bf16 is emulated and
    slower than fp32 (figures: README.md, Train). PIX2PIX_CPU_BF16=0 (or 1)
    overrides the detection, e.g. to run a whole test suite as a machine without it would."""
    override = os.environ.get("PIX2PIX_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def default_precision(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":  # pre-Ampere GPUs only emulate bf16: fp16 (with a GradScaler) there
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def native_precisions(device: torch.device | str) -> set[str]:
    """The precisions a device runs at full speed."""
    device = torch.device(device)
    return {"fp32", default_precision(device)} | ({"fp16"} if device.type == "cuda" else set())


def inference_precision(requested: str | None, device: torch.device | str, trained: str | None) -> str:
    """The one rule for running a generator (validation, evaluation, translation): the requested
    precision; for "auto", the precision the model was trained at where the device runs it
    natively, so that evaluation reproduces the validation of training; else the device's best."""
    if requested in (None, "auto") and trained in native_precisions(device):
        return trained
    return resolve_precision(requested, device)


def resolve_precision(requested: str | None, device: torch.device | str) -> str:
    """``None`` or "auto" -> the hardware's best; fp16 on a CPU is refused (no fast kernels)."""
    if requested in (None, "auto"):
        return default_precision(device)
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)} or auto")
    if requested == "fp16" and torch.device(device).type == "cpu":
        raise ConfigError("fp16 needs a GPU; on a CPU use bf16 (with AMX) or fp32")
    return requested


def autocast(device: torch.device | str, precision: str):
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def set_threads(count: int | None) -> int:
    """Set torch's intra-op threads. Ray sets OMP_NUM_THREADS from a worker's CPU share
    (1 for a fractional worker), so the count is set explicitly; None means all cores."""
    count = count or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count
