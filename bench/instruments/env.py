"""Environment metadata for every run: versions, device, CPU, pinned flags, git commit, time."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch


def pin_tf32(enabled: bool) -> None:
    """Pin TF32 for cuBLAS matmuls and cuDNN, so float32 results mean the same on every run."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with '+dirty' for local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed copy): recorded as unknown
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def nvml_handle(device: torch.device):
    """NVML's handle for torch's CUDA device, found by UUID (so CUDA_VISIBLE_DEVICES cannot mismatch it).

    On a MIG slice CUDA reports the slice's UUID, which NVML knows as "MIG-<uuid>"; a whole GPU is "GPU-<uuid>".
    """
    import pynvml

    uuid = torch.cuda.get_device_properties(device).uuid
    pynvml.nvmlInit()
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError_NotFound:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"MIG-{uuid}")
        yield handle
    finally:
        pynvml.nvmlShutdown()


def gpu_info(device: torch.device) -> dict:
    """Name, driver and total memory of the GPU, from NVML."""
    import pynvml

    with nvml_handle(device) as handle:
        return {
            "gpu_name": pynvml.nvmlDeviceGetName(handle),
            "gpu_driver": pynvml.nvmlSystemGetDriverVersion(),
            "gpu_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        }


def environment(device: str) -> dict:
    """Everything a reader needs to know where a number came from."""
    info = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": torch.backends.mkldnn.is_available(),
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if torch.device(device).type == "cuda":
        info.update(gpu_info(torch.device(device)))
    return info
