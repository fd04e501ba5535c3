"""The decoder's search in torch, on a GPU (the gpu extra), or in bf16 on a CPU that multiplies in it.

The only module of the runtime that imports torch, and only when asked to: a CPU service never
does. The search is runtime.beam's loop around runtime.decoder.ArrayStep, whose step runs in torch
on the device through the array API: the matmuls in bf16 where the hardware multiplies in it
(Ampere and later GPUs, AVX512-BF16 CPUs), else fp32; the cell and the log-probabilities in fp32.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from runtime.decoder import ArrayStep, FrozenDecoder


def cuda_available() -> bool:
    """Whether torch is installed and sees a GPU; torch is imported only where an NVIDIA driver is there."""
    if importlib.util.find_spec("torch") is None or not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def torch_step(decoder: FrozenDecoder, device: str, precision: str) -> ArrayStep:
    """The decoder's step in torch on device (cpu or cuda), its matmuls in precision (auto, bf16 or fp32)."""
    try:
        import torch
    except ImportError:
        raise RuntimeError(f"the decoder in {precision} on {device} runs in torch: pip install 'captioner[gpu]'") from None
    if precision == "int8":
        raise ValueError(f"int8 decoder weights run on the CPU only, not on {device}: use bf16 or fp32")
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device == "cuda" else torch.cpu._is_avx512_bf16_supported()
        precision = "bf16" if native else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    return ArrayStep(decoder, asarray=lambda array: torch.from_numpy(array).to(device), matmul_dtype=dtype)
