"""oneDNN's own buffers in bfloat16 (and float16 inference), read off oneDNN: what the memory model
cannot count from tensors.

In float32 the memory model counts oneDNN's buffers from its layout rules (rnn_utils) to the byte. In
bfloat16 oneDNN picks other kernels by ISA (AVX512 emulating bfloat16, AVX512-BF16, AMX), each with its
own reordered weights, blocked GEMM buffers and scratchpad, whose sizes follow blocking heuristics that
oneDNN does not publish and that change with the ISA, the thread count and the shape. So the model reads
them off the library: on this machine by running the one op at the cell's shape under the profiler
(`Probe`, a second or a few at the default sizes, cached per shape), and for a recorded CPU off its recorded step
(`Recorded`). Everything else in the step stays counted.

What is read: the highest running sum of the allocations an op makes itself (not through aten::empty,
which are its outputs and float32 copies, counted by the model), inside `aten::mkldnn_rnn_layer`
(inference or training forward) and `aten::mkldnn_rnn_layer_backward`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol

FORWARD_OP, BACKWARD_OP = "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"


class OneDNNBuffers(Protocol):
    """Where the model gets oneDNN's own buffers in a low-precision dtype: `what` is 'inference', 'forward'
    (training) or 'backward'; the sizes are the LSTM's (T, B, H, I)."""

    source: str  # in words, for the prediction's notes

    def rnn_bytes(self, what: str, T: int, B: int, H: int, I: int, dtype: str = "bfloat16") -> int: ...

    def gemm_bytes(self, M: int, K: int, N: int) -> int:
        """The scratchpad of one (M, K) x (K, N) bfloat16 matmul, beside its result."""


def own_peak(events: Iterable[tuple[int, int, str]], op: str) -> int:
    """The highest running sum of the allocations op made itself, in a timeline's events."""
    from .measure import running_peak

    return running_peak(size for _, size, name in events if name == op)


#: Above this batch the probe is extrapolated from probes at half and at this batch: the buffers grow
#: linearly in B there (measured: inference and backward at B 128, 256 -> 512 to the byte, T 35, H 256),
#: and a probe at a batch a budget search reaches would cost as much as the step.
PROBE_MAX_BATCH = 256


class Probe:
    """oneDNN on this machine: runs nn.LSTM's op once at the shape, in the cell's dtype, and reads its buffers."""

    source = (f"read off oneDNN on this CPU (one call of the op at the cell's shape, under the profiler; "
              f"above batch {PROBE_MAX_BATCH} extrapolated linearly from batches {PROBE_MAX_BATCH // 2} and "
              f"{PROBE_MAX_BATCH})")

    def rnn_bytes(self, what: str, T: int, B: int, H: int, I: int, dtype: str = "bfloat16") -> int:
        if B <= PROBE_MAX_BATCH:
            return _probe_rnn(what, T, B, H, I, dtype)
        lo, hi = (_probe_rnn(what, T, b, H, I, dtype) for b in (PROBE_MAX_BATCH // 2, PROBE_MAX_BATCH))
        return hi + (hi - lo) * (B - PROBE_MAX_BATCH) // (PROBE_MAX_BATCH // 2)

    def gemm_bytes(self, M: int, K: int, N: int) -> int:
        return _probe_gemm(M, K, N)


@functools.cache
def _probe_gemm(M: int, K: int, N: int) -> int:
    import torch

    from .measure import cpu_allocation_timeline

    a, b = torch.zeros(M, K, dtype=torch.bfloat16), torch.zeros(K, N, dtype=torch.bfloat16)
    return own_peak(cpu_allocation_timeline(lambda: torch.mm(a, b)), "aten::mm") - M * N * 2


@functools.cache
def _probe_rnn(what: str, T: int, B: int, H: int, I: int, dtype_name: str = "bfloat16") -> int:
    import torch

    from .measure import cpu_allocation_timeline

    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype_name)
    lstm = torch.nn.LSTM(I, H).to(dtype)
    x = torch.randn(T, 1 if what == "inference" else B, I, generator=g).expand(T, B, I).to(dtype).contiguous()
    state = (torch.zeros(1, B, H, dtype=dtype), torch.zeros(1, B, H, dtype=dtype))
    if what == "inference":
        with torch.no_grad():
            return own_peak(cpu_allocation_timeline(lambda: lstm(x, state)), FORWARD_OP)
    x.requires_grad_()
    if what == "forward":
        return own_peak(cpu_allocation_timeline(lambda: lstm(x, state)), FORWARD_OP)
    y, _ = lstm(x, state)
    grad = torch.ones_like(y)
    events = cpu_allocation_timeline(lambda: torch.autograd.grad(y, [x, *lstm.parameters()], grad,
                                                                  retain_graph=True))
    return own_peak(events, BACKWARD_OP)


class Recorded:
    """oneDNN's buffers as one recorded step of a cell saw them (a timelines file's events), for
    predicting that cell for the CPU that recorded it."""

    def __init__(self, events: Iterable[tuple[int, int, str]], cpu: str):
        events = list(events)
        self.source = f"read off the recorded step ({cpu})"
        self.peaks = {FORWARD_OP: own_peak(events, FORWARD_OP), BACKWARD_OP: own_peak(events, BACKWARD_OP)}
        # a matmul's result is allocated (by the matmul, or by its caller for out=), then the matmul allocates
        # its scratchpad and frees it: by result size (the largest of the GEMMs whose results have that size)
        self.gemm: dict[int, int] = {}
        for (_, out, _), (_, scratch, op), (_, freed, op2) in zip(events, events[1:], events[2:]):
            if op in ("aten::mm", "aten::addmm") and op == op2 and out > 0 and scratch > 0 and freed == -scratch:
                self.gemm[out] = max(scratch, self.gemm.get(out, 0))

    def rnn_bytes(self, what: str, T: int, B: int, H: int, I: int, dtype: str = "bfloat16") -> int:
        return self.peaks[BACKWARD_OP if what == "backward" else FORWARD_OP]

    def gemm_bytes(self, M: int, K: int, N: int) -> int:
        return self.gemm.get(M * N * 2, 0)
