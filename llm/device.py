"""Choosing the device, knowing how fast it can go, and whether a model fits in its memory."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import time

import torch

from llm.config import ModelConfig
from llm.errors import ConfigError

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets; the first name found in
# the device's name counts, so a variant (H100 PCIe, H100 NVL) comes before its family's SXM figure.
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "4090": 165e12,
}


def local_rank() -> int:
    """This process's GPU under torchrun (LOCAL_RANK); 0 for a single process."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is taken as a torch device name. A CUDA device
    always has its index: under torchrun a bare 'cuda' is this rank's own GPU (LOCAL_RANK), so that nothing a
    rank does before training (memory checks, the device's name) touches GPU 0. fp32 matrix products on a GPU
    use TF32 tensor cores (a 10-bit mantissa: ample for training and sampling, several times faster)."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{name}: CUDA is not available on this machine", field="device")
    device = torch.device(name)
    if device.type == "cuda":
        # The flag every reader understands: after the newer fp32_precision API, reading the matmul precision
        # the older way (torch.get_float32_matmul_precision, as libraries do) raises. CPUs are left as they are.
        torch.backends.cuda.matmul.allow_tf32 = True
        if device.index is None:
            device = torch.device("cuda", local_rank())
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def has_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively here (a recent GPU, or a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        # Emulated bf16 (a V100 or T4 runs it through fp32 units) is slower than fp32: it does not count.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a precision setting. "auto" is bf16 on CUDA only: on a CPU bf16 helps only with
    bf16 units (and is many times slower than fp32 without), so a CPU run asks for it by name."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if not has_bf16(device):
            raise ConfigError(f"{describe(device)} has no native bf16; use fp32", field="precision")
        return torch.bfloat16
    assert precision == "auto", precision
    return torch.bfloat16 if device.type == "cuda" and has_bf16(device) else None


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


def gpu_memory(device: torch.device) -> tuple[str, int, int] | None:
    """(name, bytes in use, bytes in all) of a CUDA device as the driver reports them (nvidia-smi), read
    without a CUDA context in this process: torch.cuda.mem_get_info opens one, which keeps about 0.5 GB of
    the GPU from the runs (a studio that shows a plan). None where nvidia-smi cannot say."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    index = device.index or 0
    ids = [v.strip() for v in visible.split(",")] if visible is not None else None
    if ids is not None and index >= len(ids):
        return None
    query = ["nvidia-smi", f"--id={ids[index] if ids else index}", "--query-gpu=name,memory.used,memory.total"]
    try:
        found = subprocess.run([*query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        name, used, total = (part.strip() for part in found.stdout.splitlines()[0].rsplit(",", 2))
        return name, int(used) * 2**20, int(total) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on the device, or None where that cannot be known. A GPU this
    process has not used yet is asked through its driver (gpu_memory), not through a new CUDA context."""
    if device.type == "cuda":
        known = None if torch.cuda.is_initialized() else gpu_memory(device)
        return known[2] - known[1] if known else torch.cuda.mem_get_info(device)[0]
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    if device.type != "cpu":
        return None
    try:  # Linux: what the kernel can hand out without swapping (free memory plus reclaimable caches)
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclasses.dataclass
class ModelMemory:
    """A Transformer's fp32 parameters (count, and bytes by part) and buffers (bytes)."""

    n_parameters: int
    embedding_bytes: int  # the token embedding, and the output projection when it is not tied
    layer_bytes: int  # all transformer blocks and the final norm
    buffer_bytes: int  # the rotary cos and sin tables, (context_length, head_dim/2) each

    @property
    def parameter_bytes(self) -> int:
        return self.embedding_bytes + self.layer_bytes


def model_memory(cfg: ModelConfig) -> ModelMemory:
    """The memory llm.model.Transformer(cfg) takes, by arithmetic on the config: nothing is allocated, and it
    takes microseconds for any shape (building on the meta device costs seconds of torch imports on first
    use). tests/test_hostile_inputs.py checks it against real models: change both together."""
    C, D, H = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
    kv_width = (getattr(cfg, "n_kv_head", None) or cfg.n_head) * D  # keys and values: fewer heads when grouped
    attention = 2 * C * C + 2 * C * kv_width  # wq, wo (C x C); wk, wv (C x kv_width)
    block = attention + 3 * C * H + 2 * C  # + SwiGLU's gate, up and down projections + two RMSNorm weights
    embedding = cfg.vocab_size * C * (1 if cfg.tie_embeddings else 2)
    layers = cfg.n_layer * block + C  # + the final norm
    fp32 = 4
    return ModelMemory(
        n_parameters=embedding + layers,
        embedding_bytes=fp32 * embedding,
        layer_bytes=fp32 * layers,
        buffer_bytes=fp32 * 2 * cfg.context_length * (D // 2),
    )


def size_text(n: float) -> str:
    """Bytes for people: '512 MB', '17.2 GB'."""
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def check_model_fits(cfg: ModelConfig, device: torch.device, copies: int = 1, what: str = "the model") -> int:
    """Refuse (ConfigError, with the numbers) a model whose parameters and buffers exceed the memory available
    on the device, before anything is allocated; return the bytes needed. copies: how many parameter-sized
    tensors the work holds (loading reads the weights file beside the model: 2; training keeps weights,
    gradients and AdamW's two moments: 4). Activations come on top: passing is necessary, not sufficient."""
    memory = model_memory(cfg)
    needed = copies * memory.parameter_bytes + memory.buffer_bytes
    available = available_memory(device)
    if available is not None and needed > available:
        raise ConfigError(
            f"{what} needs {size_text(needed)} of memory but {device.type} has {size_text(available)} available: "
            f"{memory.n_parameters:,} parameters ({copies} x {size_text(memory.parameter_bytes)}; embeddings "
            f"{size_text(memory.embedding_bytes)} at vocab_size {cfg.vocab_size:,} x d_model {cfg.d_model:,}, "
            f"{cfg.n_layer:,} layers {size_text(memory.layer_bytes)}) and rotary tables of "
            f"{size_text(memory.buffer_bytes)} (context_length {cfg.context_length:,} x head size {cfg.head_dim:,}); "
            "choose a smaller model"
        )
    return needed


# Share of a device's matrix-product rate that small models reach (short sequences, small matrices), for the
# benchmark time estimate (llm.eval.bench.estimate); the training plans time real steps (llm.train.speed).
# CPU: measured (0.5 on the opposites sample, 6-layer base, 2-core CPU); GPUs: a guess, unmeasured here (no GPU).
EFFICIENCY = {"cpu": 0.5, "cuda": 0.25, "mps": 0.25}


DECODE_SLOWDOWN = 20  # generating one token at a time: tiny matrix products, far below the device's rate


@functools.cache
def device_rate(device_type: str) -> float:
    """FLOP/s that a small model's work reaches on this kind of device (for estimates)."""
    device = torch.device(device_type)
    rate = peak_flops(device) if device_type == "cuda" else measure_matmul_flops(device)
    return rate * EFFICIENCY.get(device_type, 0.25)
