"""What CUDA's libraries keep across steps: cuBLAS's and cuBLASLt's workspaces."""

from __future__ import annotations

from .counts import MIB


def cublas_workspace_bytes(capability: tuple[int, int]) -> int:
    """cuBLAS's workspace per (handle, stream): 32 MiB on sm_90, else 8 MiB + 128 KiB (CUDABlas / CublasHandlePool)."""
    return 32 * MIB if capability[0] == 9 else 8 * MIB + 128 * 1024


def library_bytes_cuda(mode: str, capability: tuple[int, int]) -> int:
    """What cuBLAS keeps across steps: a workspace per handle (the forward's thread, and autograd's device
    thread in training) and cuBLASLt's 1 MiB."""
    handles = 2 if mode == "train" else 1
    return handles * cublas_workspace_bytes(capability) + MIB

