"""Choosing the device and knowing how fast it can go."""

from __future__ import annotations

import time

import torch

from llm.errors import ConfigError

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is taken as a torch device name."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{name}: CUDA is not available on this machine", field="device")
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA only: on CPUs without bf16 units it is many times slower than fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def measure_matmul_flops(device: torch.device, size: int = 1024, seconds: float = 0.5) -> float:
    """The fp32 (CPU) or bf16 (GPU) matrix-product rate this device reaches, in FLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # A private generator: drawing from the global one would shift the dropout masks of a resumed run.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def peak_flops(device: torch.device) -> float:
    """Peak FLOP/s for MFU: the data-sheet figure for known GPUs, else a quick measurement."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    return measure_matmul_flops(device)
