"""Shared pieces of the GPU benchmarks: device description, matrix-throughput ceilings, FLOP counting, timing.

Ceilings: the vendor's dense (no sparsity) tensor-core rates for the matrix dtype in use, by device name, plus a
matrix product measured in the same run (``measured_matmul_tflops``), so the fraction of the machine reached can be
read against either. FLOPs are counted from the model with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, convolutions and attention; elementwise work is not counted), so "fraction of peak" is matrix work only.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense TFLOP/s by matrix dtype ("fp32": plain FP32 pipes, used when TF32 is off). Vendor datasheets (SXM parts).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "GH200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"name": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}
        info["cuda"] = torch.version.cuda
    else:
        info |= {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return info


def matrix_dtype(device: torch.device, autocast_dtype: torch.dtype | None) -> str:
    """The dtype the matrix units run in: the autocast dtype, else tf32 / fp32 by the TF32 switch."""
    if autocast_dtype is not None:
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}[autocast_dtype]
    return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


def peak_tflops(device: torch.device, dtype: str) -> tuple[float | None, str]:
    """Datasheet dense TFLOP/s for ``dtype`` on ``device`` and where it comes from (None on CPU / unknown GPUs)."""
    if device.type != "cuda":
        return None, "no datasheet ceiling on CPU"
    name = torch.cuda.get_device_name(device)
    for key, rates in PEAK_TFLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return rates[dtype], f"{key} datasheet, dense {dtype}"
    return None, f"{name}: not in the ceiling table"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """Wall seconds of ``fn()`` (device work included) and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def count_flops(fn) -> tuple[float, object]:
    """Matrix FLOPs of ``fn()`` (forward and backward) and its result."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def measured_matmul_tflops(device: torch.device, dtype: str, reps: int = 10) -> float:
    """TFLOP/s of a square matrix product on random data in ``dtype`` (8192 on CUDA, 1024 on CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}[dtype]
    if device.type == "cpu" and torch_dtype == torch.float16:
        torch_dtype = torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(torch_dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(torch_dtype)
    for _ in range(2):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds / 1e12


def write_json(path: str | Path, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))
