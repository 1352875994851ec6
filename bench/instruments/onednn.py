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
(inference or training forward) and `aten::mkldnn_rnn_layer_backward`; and a bfloat16 matmul's scratchpad,
asked as the step asks it (`Gemm`: mm or addmm, which operand is a transposed view, the bias's shape, a
result written into a given tensor): with bfloat16 instructions oneDNN's brgemm packs a transposed operand
and accumulates by other blocks, so its buffers follow the layout as well as the shape (read as torch.mm of
two contiguous operands, 13 of 66 bfloat16 and autocast cells recorded on an AVX512-BF16 CPU came out 5.6-10.8%
under their measured peak).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

FORWARD_OP, BACKWARD_OP = "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"
GEMM_OPS = ("aten::mm", "aten::addmm")


@dataclass(frozen=True)
class Gemm:
    """One (M, K) x (K, N) matmul as a step calls it: `op` aten::mm or aten::addmm; `a_t`, `b_t`: the operand
    is the transposed view of a contiguous tensor (W.T, X.T); `bias`: addmm's added input, "row" (N,)
    broadcast (nn.Linear's bias) or "full" (M, N); `out`: written into a given tensor, so it allocates no
    result; `dtype`: the operands' (autocast's compute dtype under autocast)."""

    M: int
    K: int
    N: int
    op: str = "aten::mm"
    a_t: bool = False
    b_t: bool = False
    bias: str = ""
    out: bool = False
    dtype: str = "bfloat16"

    @classmethod
    def addmm(cls, M: int, K: int, N: int, bias: str, **layout) -> Gemm:
        return cls(M, K, N, "aten::addmm", bias=bias, **layout)

    @property
    def result_bytes(self) -> int:
        """Its result's bytes (allocated by the op unless `out`)."""
        import torch

        return 0 if self.out else self.M * self.N * getattr(torch, self.dtype).itemsize

    def call(self) -> Callable[[], object]:
        """The matmul on zeros of this layout, ready to run."""
        import torch

        dtype = getattr(torch, self.dtype)

        def operand(rows: int, cols: int, transposed: bool) -> torch.Tensor:
            return torch.zeros(cols, rows, dtype=dtype).T if transposed else torch.zeros(rows, cols, dtype=dtype)

        a, b = operand(self.M, self.K, self.a_t), operand(self.K, self.N, self.b_t)
        out = torch.zeros(self.M, self.N, dtype=dtype) if self.out else None
        if self.op == "aten::mm":
            return (lambda: torch.mm(a, b, out=out)) if self.out else (lambda: torch.mm(a, b))
        added = torch.zeros(self.N if self.bias == "row" else (self.M, self.N), dtype=dtype)
        return (lambda: torch.addmm(added, a, b, out=out)) if self.out else (lambda: torch.addmm(added, a, b))


def gemm_of(op: str, inputs: list[tuple[tuple[int, ...], tuple[int, ...], str]]) -> Gemm:
    """The Gemm of a profiled mm/addmm call from its tensor inputs' (sizes, strides, dtype), in call order
    (addmm: input, mat1, mat2; then out=, when given)."""
    mats = inputs[1:3] if op == "aten::addmm" else inputs[:2]
    (M, K), a_strides, dtype = mats[0]
    (_, N), b_strides, _ = mats[1]
    bias = ("row" if len(inputs[0][0]) == 1 else "full") if op == "aten::addmm" else ""
    transposed = [strides[0] == 1 and strides[1] != 1 for _, strides, _ in mats]
    return Gemm(M, K, N, op, transposed[0], transposed[1], bias, len(inputs) > (3 if bias else 2),
                dtype.removeprefix("torch."))


def step_gemms(fn: Callable[[], object]) -> list[tuple[Gemm, int]]:
    """Every matmul of one call of fn, in order, with the bytes it allocated itself beyond its result (its
    scratchpad), as the profiler saw them: what a step asks of oneDNN, to hold the probe and the model to."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    from .measure import _quiet_native_stderr, running_peak

    fn()  # a first call: the profiler cannot size frees of blocks allocated before it started
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                         record_shapes=True) as prof:
        fn()
    found: list[tuple[int, Gemm, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag != _EventType.TorchOp or node.name not in GEMM_OPS:
            continue
        inputs = [(tuple(i.sizes), tuple(i.strides), str(i.dtype)) for i in node.extra_fields.inputs
                  if hasattr(i, "sizes")]
        gemm = gemm_of(node.name, inputs)
        own = running_peak(child.extra_fields.alloc_size for child in node.children
                           if child.tag == _EventType.Allocation and child.extra_fields.device.type == "cpu")
        found.append((node.start_time_ns, gemm, max(own - gemm.result_bytes, 0)))
    return [(gemm, scratch) for _, gemm, scratch in sorted(found, key=lambda f: f[0])]


class OneDNNBuffers(Protocol):
    """Where the model gets oneDNN's own buffers in a low-precision dtype: `what` is 'inference', 'forward'
    (training) or 'backward'; the sizes are the LSTM's (T, B, H, I)."""

    source: str  # in words, for the prediction's notes

    def rnn_bytes(self, what: str, T: int, B: int, H: int, I: int, dtype: str = "bfloat16") -> int: ...

    def gemm_bytes(self, gemm: Gemm) -> int:
        """The scratchpad of one bfloat16 matmul as the step calls it, beside its result."""


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

    def gemm_bytes(self, gemm: Gemm) -> int:
        import torch

        return _probe_gemm(gemm, torch.get_num_threads())


@functools.cache
def _probe_gemm(gemm: Gemm, threads: int) -> int:
    """The op itself, in the step's layout, on this CPU at `threads` (the current count; oneDNN's blocking
    follows it): what it allocates beyond its result."""
    from .measure import cpu_allocation_timeline

    return max(own_peak(cpu_allocation_timeline(gemm.call()), gemm.op) - gemm.result_bytes, 0)


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

    def gemm_bytes(self, gemm: Gemm) -> int:
        return self.gemm.get(gemm.M * gemm.N * 2, 0)
