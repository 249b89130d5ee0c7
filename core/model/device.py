"""One device resolver for training, inference and SAM: auto, cpu, cuda or cuda:N."""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from ..errors import MapSegError

#: The choices offered by every algorithm's DEVICE parameter (enum values by name).
DEVICES = ["auto", "cpu", "cuda"]


def gpu_driver_present() -> bool:
    """False when no GPU driver is loaded (Linux: NVIDIA's, ROCm's, or WSL2's GPU device): PyTorch
    cannot see a GPU then, so 'auto' is the CPU without importing PyTorch (about 0.4 GB)."""
    if sys.platform.startswith("linux"):
        marks = ("/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")
        return any(os.path.exists(p) for p in marks)
    return True


def device_name(name: str | None) -> str:
    """A DEVICE value as written, normalised: empty -> 'auto', spaces and case ignored."""
    return (name or "auto").strip().lower()


def resolve_device(name: str | None) -> str:
    """'auto' -> 'cuda' when PyTorch sees a GPU, else 'cpu'; 'cuda' and 'cuda:N' are checked."""
    name = device_name(name)
    if name == "cpu":
        return name
    torch_missing = importlib.util.find_spec("torch") is None
    if name == "auto" and (torch_missing or not gpu_driver_present()):
        return "cpu"
    if torch_missing:
        raise MapSegError(
            f"DEVICE is {name}, which needs PyTorch with CUDA (not installed here). Choose auto "
            "or cpu, or install PyTorch (python3 -m pip install torch)."
        )
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise MapSegError(f"Unknown device '{name}'. Choose auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise MapSegError(
            f"DEVICE is {name} but PyTorch {torch.__version__} sees no CUDA GPU (built for CUDA "
            f"{torch.version.cuda or 'none'}). Choose auto or cpu, or install a CUDA build of "
            "PyTorch and an NVIDIA driver."
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MapSegError(
            f"DEVICE is {name} but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), "
            f"numbered from 0. Choose cuda:0 to cuda:{torch.cuda.device_count() - 1}."
        )
    return name


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")
