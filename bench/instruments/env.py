"""Environment metadata for every run: versions, device, CPU, pinned flags, git commit, time."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass
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


#: The CPU features that change what torch and oneDNN dispatch (as /proc/cpuinfo names them).
DISPATCH_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
#: Environment variables that change dispatch or threading; recorded when set.
DISPATCH_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_DEFAULT_FPMATH_MODE",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY",
                "GOMP_CPU_AFFINITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_flags() -> tuple[str, ...]:
    """The dispatch-relevant ISA features this CPU reports (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in DISPATCH_FLAGS if flag in have)
    except OSError:
        pass
    return ()


def _parallel_backend() -> str | None:
    """ATen's parallel backend (OpenMP, native thread pool, TBB), as torch reports it."""
    match = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    return match.group(1).strip() if match else None


def _config_version(pattern: str) -> str | None:
    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else None


@dataclass(frozen=True)
class CpuDispatch:
    """What decides which kernels a CPU step runs: the facts the memory model chooses its counts from.

    `onednn_bf16`: oneDNN runs bfloat16 here (torch.ops.mkldnn._is_mkldnn_bf16_supported(): AVX512 or
    newer, and not capped below it by ONEDNN_MAX_CPU_ISA); nn.LSTM's bfloat16 then dispatches to oneDNN
    and bfloat16 matmuls to oneDNN's GEMM. `native_bf16`: the CPU has bfloat16 instructions
    (AVX512-BF16 or AMX); without them oneDNN emulates bfloat16 on AVX512 and takes other kernels.
    """

    cpu_capability: str  # what ATen's vectorized kernels use: DEFAULT, AVX2, AVX512, ...
    cpu_flags: tuple[str, ...]
    onednn: bool
    onednn_bf16: bool
    onednn_fp16: bool
    onednn_version: str | None
    blas: str | None
    dispatch_env: dict

    @property
    def native_bf16(self) -> bool:
        return self.onednn_bf16 and bool({"avx512_bf16", "amx_bf16"} & set(self.cpu_flags))

    def as_dict(self) -> dict:
        return asdict(self) | {"cpu_flags": list(self.cpu_flags), "native_bf16": self.native_bf16}

    @classmethod
    def from_dict(cls, data: dict) -> CpuDispatch:
        """From a recorded environment (environment.json, a timelines file's meta)."""
        return cls(cpu_capability=data["cpu_capability"], cpu_flags=tuple(data.get("cpu_flags", ())),
                   onednn=data.get("onednn", True),
                   # environment.json says onednn_*, the shared recording's meta mkldnn_*_supported
                   onednn_bf16=data["onednn_bf16"] if "onednn_bf16" in data else data["mkldnn_bf16_supported"],
                   onednn_fp16=data.get("onednn_fp16", data.get("mkldnn_fp16_supported", False)),
                   onednn_version=data.get("onednn_version"), blas=data.get("blas"),
                   dispatch_env=data.get("dispatch_env", {}))

    def bf16_path(self) -> str:
        """In words: how this CPU runs bfloat16, and why."""
        if not self.onednn_bf16:
            why = ("ONEDNN_MAX_CPU_ISA caps oneDNN below AVX512" if self.dispatch_env.get("ONEDNN_MAX_CPU_ISA")
                   else "no AVX512")
            return f"ATen's native kernels: oneDNN does not run bfloat16 here ({why})"
        if self.native_bf16:
            return "oneDNN bfloat16: this CPU has " + "/".join(
                f.upper().replace("_", "-") for f in self.cpu_flags if f in ("avx512_bf16", "amx_bf16"))
        return "oneDNN bfloat16, emulated: this CPU has AVX512 without bfloat16 instructions"


@functools.cache
def cpu_dispatch() -> CpuDispatch:
    """This process's CPU dispatch facts (environment variables included: torch and oneDNN read them at
    start-up, so they hold for the process)."""
    available = torch.backends.mkldnn.is_available()
    return CpuDispatch(
        cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_flags=cpu_flags(), onednn=available,
        onednn_bf16=available and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        onednn_fp16=available and torch.ops.mkldnn._is_mkldnn_fp16_supported(),
        onednn_version=_config_version(r"MKL-DNN v([\d.]+)"),
        blas=" ".join(filter(None, [_config_version(r"BLAS_INFO=(\w+)"),
                                    _config_version(r"Math Kernel Library Version ([\w.]+)")])) or None,
        dispatch_env={k: os.environ[k] for k in DISPATCH_ENV if k in os.environ})


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
        "torch_interop_threads": torch.get_num_interop_threads(),
        "parallel_backend": _parallel_backend(),
        # what decides the CPU kernels a number came from (CpuDispatch); their names as the memory model reads them
        **{k: v for k, v in cpu_dispatch().as_dict().items() if k != "onednn"},
        "bf16_path": cpu_dispatch().bf16_path(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if torch.device(device).type == "cuda":
        info.update(gpu_info(torch.device(device)))
    return info
