"""Why a step takes what it takes: a few steady steps under torch.profiler, their time split into parts that do not
overlap and add up to the step's wall time, the device's GEMM figures, and the bytes alive through one step.

The step is the suite's own (`Subject.step`); the profile code only adds named ranges around it (record_function:
step, forward, loss, backward, optimizer, and the output layer, through module hooks and the step's phase clock), never
inside the implementations. Attribution walks the profiler's CPU op tree: each top-level op (an ATen op with no op
above it) counts once, with its inclusive time, in the category of that outermost op; the step's wall time not inside
any op is "rest" (Python, dispatch, the autograd engine, the profiler's own bookkeeping). GPU figures (kernel time,
kernels per step, idle share) come from the profiler's own device events; HTA is not needed.
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._C._profiler import RecordScope, _EventType
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile, schedule

from ..grid import TIME_PARTS, Cell
from .measure import Subject, _quiet_native_stderr, cpu_allocation_events, optimizer_tensors, sync, warm_up
from .memory import NotModelled, Prediction, predict  # the memory model's public face: the only import here
from .peak import recurrence_floor_ms
from .what_ran import event_names

STEP = "lstm_bench::step"
FORWARD, LOSS, BACKWARD, OPTIMIZER = "forward", "loss", "backward", "optimizer"
PHASE_RANGES = (FORWARD, LOSS, BACKWARD, OPTIMIZER)
OUTPUT = "lstm_bench::output_layer"
DEVICE_WAIT = "lstm_bench::device_wait"  # the host waiting for the GPU at a phase's end (CUDA only)

#: where a step's wall time goes: parts that do not overlap and add up to it (CSV columns part_<name>_ms)
CATEGORIES = TIME_PARTS
GEMMS = {"mm", "addmm", "matmul", "linear", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "_addmm_activation"}
RNN_LIBRARY = {"lstm", "mkldnn_rnn_layer", "mkldnn_rnn_layer_backward", "_cudnn_rnn", "_cudnn_rnn_backward",
               "_thnn_fused_lstm_cell", "_thnn_fused_lstm_cell_backward_impl", "lstm_cell"}
COPIES = {"copy_", "to", "_to_copy", "clone", "contiguous", "cat", "stack", "_copy_from", "_copy_from_and_resize",
          "type_as", "index_select", "gather", "scatter", "scatter_"}
POINTWISE = {"add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "sigmoid", "sigmoid_", "tanh",
             "tanh_", "sigmoid_backward", "tanh_backward", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "neg", "exp",
             "relu", "threshold_backward", "where", "clamp", "clamp_min", "lerp", "reciprocal", "sqrt", "pow"}
FUSION_MARKS = ("FusionGroup", "TensorExprGroup", "CudaFusionGroup", "fused", "triton")
COMPILED_GRAPH = "## Call CompiledFxGraph"
#: kineto's activity types of the device's own work (kernels launched per step count "kernel" only)
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")
#: a GEMM kernel's name holds one of these (cuBLAS, cuBLASLt, CUTLASS and their sm90 xmma kernels, Triton's matmuls)
GEMM_KERNEL_MARKS = ("gemm", "cutlass", "xmma", "cublas", "matmul", "_mm_")
#: the verdict: launches/dispatch when this share of the wall is outside ops (CPU) or the GPU idles (CUDA), or when
#: a top-level op lasts under SHORT_OP_US on average (each op's cost is then mostly its dispatch)
DISPATCH_SHARE = 0.5
SHORT_OP_US = 10.0


def _enter(name: str) -> record_function:
    rf = record_function(name)
    rf.__enter__()
    return rf


class RangeClock:
    """A phase clock (the hook `train_step` calls as each phase ends) that opens and closes named profiler ranges:
    forward (the model's forward, through module hooks), loss, backward, optimizer; the device is synchronized at
    each mark, as the suite's rounds do, so a phase's kernels lie inside its range."""

    def __init__(self, subject: Subject):
        self.device = subject.device
        self.train = subject.optimizer is not None
        self.open: list[record_function] = []
        model = subject.model
        self.hooks = [
            model.register_forward_pre_hook(lambda *_: self.open.append(_enter(FORWARD))),
            model.register_forward_hook(lambda *_: self._switch(LOSS)),
            model.linear.register_forward_pre_hook(lambda *_: self.open.append(_enter(OUTPUT))),
            model.linear.register_forward_hook(lambda *_: self._close()),
        ]

    def _close(self) -> None:
        if self.open:
            self.open.pop().__exit__(None, None, None)

    def _switch(self, name: str | None) -> None:
        self._close()
        if name:
            self.open.append(_enter(name))

    def _sync(self) -> None:
        if self.device.type == "cuda":  # the wait for the GPU's queued work, in a range of its own
            with record_function(DEVICE_WAIT):
                sync(self.device)

    def start(self) -> None:
        self._sync()

    def mark(self, phase: str) -> None:
        self._sync()
        self._switch({"forward": BACKWARD if self.train else None, "backward": OPTIMIZER}.get(phase))

    def remove(self) -> None:
        while self.open:
            self._close()
        for hook in self.hooks:
            hook.remove()


def ranged_step(subject: Subject) -> Callable[[], object]:
    """subject's step inside a STEP range, its phases in theirs (subject.clock must be a RangeClock)."""
    def step():
        with record_function(STEP):
            return subject.step()
    return step


# ----------------------------------------------------------------------------- attribution


@dataclass
class StepParts:
    """One profiled step: its wall time split into CATEGORIES (ms, adding up to wall_ms), op counts, GPU figures."""

    wall_ms: float
    parts_ms: dict[str, float]
    top_level_ops: int
    op_calls: int  # every ATen op dispatched, nested ones included
    kernel_ms: float | None = None  # CUDA: the union of the step's device activity
    gemm_kernel_ms: float | None = None  # CUDA: the part of it in GEMM kernels (by name: GEMM_KERNEL_MARKS)
    kernels: int | None = None
    names: Counter = field(default_factory=Counter)  # every event's name (profiled_step: what_ran's marks too)


def _is_op(node) -> bool:
    """An ATen (or prim, TorchScript fusion) op: not a range, not the autograd engine, not the profiler's own."""
    name = node.name
    return (node.extra_fields.scope == RecordScope.FUNCTION and "::" in name
            and not name.startswith(("autograd::", "profiler::")))


def _dims(node) -> set[int]:
    dims: set[int] = set()
    for value in node.extra_fields.inputs:
        for item in value if isinstance(value, list) else [value]:
            dims.update(int(d) for d in getattr(item, "sizes", ()) or ())
    return dims


def _category(node, input_size: int) -> str:
    base = node.name.split("::", 1)[1]
    if base in RNN_LIBRARY:
        return "rnn_library"
    if base in GEMMS:  # X @ W_x reads the one-hot input's width; every other GEMM of the cell is the recurrence's
        return "input_gemm" if input_size in _dims(node) else "recurrent_gemm"
    if base in COPIES:
        return "copies"
    if base in POINTWISE or any(mark in node.name for mark in FUSION_MARKS):
        return "pointwise"
    return "other_ops"


def _count_ops(node) -> int:
    return int(_is_op(node)) + sum(_count_ops(c) for c in node.children if c.tag == _EventType.TorchOp)


def _torch_ops(roots) -> Iterable:
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.TorchOp:
            yield node
            stack.extend(node.children)


def attribute(prof: profile, input_size: int) -> list[StepParts]:
    """Each STEP range of prof split into CATEGORIES: top-level ops by their outermost op (the output layer's forward
    ops by its range, its backward by the autograd nodes that share their sequence numbers; anything in the optimizer
    range as the optimizer), the compiled graphs' time outside ATen ops as pointwise math (Inductor's own kernels,
    which the profiler does not record as ops), the rest of the wall time as rest. Ops on other threads (CUDA's
    backward) count by time; overlap is counted once."""
    roots = prof.profiler.kineto_results.experimental_event_tree()
    nodes = list(_torch_ops(roots))
    steps = sorted((n.start_time_ns, n.end_time_ns) for n in nodes if n.name == STEP)
    optimizer = [(n.start_time_ns, n.end_time_ns) for n in nodes if n.name == OPTIMIZER]
    output_seqs = {d.extra_fields.sequence_number for n in nodes if n.name == OUTPUT for d in _torch_ops(n.children)}
    output_seqs.discard(-1)
    spans: list[tuple[int, int, str]] = []  # (start, end, category) of top-level ops and compiled-graph gaps
    names: Counter = Counter()
    op_calls: list[tuple[int, int]] = []  # (start, nested op count)

    def walk(node, output: bool) -> None:
        if node.tag != _EventType.TorchOp:
            return
        names[node.name] += 1
        if node.name == DEVICE_WAIT:
            spans.append((node.start_time_ns, node.end_time_ns, "device_wait"))
            return
        if _is_op(node):
            start = node.start_time_ns
            category = ("output_layer" if output else "optimizer" if any(a <= start <= b for a, b in optimizer)
                        else _category(node, input_size))
            spans.append((start, node.end_time_ns, category))
            op_calls.append((start, _count_ops(node)))
            for child in _torch_ops(node.children):
                names[child.name] += 1
            return
        output = output or node.name == OUTPUT or (
            node.name.startswith("autograd::engine::evaluate_function")
            and node.extra_fields.sequence_number in output_seqs)
        children = [c for c in node.children if c.tag == _EventType.TorchOp]
        if node.name.startswith(COMPILED_GRAPH):  # the graph's own kernels: its time outside the ops it calls
            cursor = node.start_time_ns
            for child in sorted(children, key=lambda c: c.start_time_ns):
                if _is_op(child):
                    spans.append((cursor, max(cursor, child.start_time_ns), "pointwise"))
                    cursor = max(cursor, child.end_time_ns)
            spans.append((cursor, max(cursor, node.end_time_ns), "pointwise"))
        for child in children:
            walk(child, output)

    for root in roots:
        walk(root, False)
    spans.sort()
    results = []
    for start, end in steps:
        parts = dict.fromkeys(CATEGORIES, 0.0)
        covered = start
        for a, b, category in spans:
            if b <= covered or a >= end:
                continue
            a, b = max(a, covered), min(b, end)  # counted once: what an earlier span covered is not counted again
            parts[category] += (b - a) / 1e6
            covered = b
        wall = (end - start) / 1e6
        parts["rest"] = max(wall - sum(parts.values()), 0.0)
        inside = [n for t, n in op_calls if start <= t <= end]
        results.append(StepParts(wall, parts, len(inside), sum(inside), names=names))
    return results


def device_figures(prof: profile, steps: list[StepParts]) -> None:
    """CUDA: each step's kernel time (the union of its device activity) and kernels launched, from the profiler's
    own device events (kineto), into steps."""
    events = prof.profiler.kineto_results.events()
    windows = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == STEP
                     and e.device_type() == torch.autograd.DeviceType.CPU)
    # the device's own work: kernels, copies and fills (not the ranges kineto mirrors onto the GPU's timeline,
    # gpu_user_annotation, which span whole phases)
    device = sorted((e.start_ns(), e.end_ns(), e.activity_type(), e.name()) for e in events
                    if e.device_type() == torch.autograd.DeviceType.CUDA and not e.is_user_annotation()
                    and e.activity_type() in DEVICE_WORK)
    for parts, (start, end) in zip(steps, windows):
        busy, gemm, covered, kernels = 0, 0, start, 0
        for a, b, kind, name in device:
            if a < start or a > end:
                continue
            kernels += kind == "kernel"
            a, b = max(a, covered), min(b, end)
            if b > a:
                busy += b - a
                gemm += (b - a) if kind == "kernel" and any(m in name.lower() for m in GEMM_KERNEL_MARKS) else 0
                covered = b
        parts.kernel_ms, parts.gemm_kernel_ms, parts.kernels = busy / 1e6, gemm / 1e6, kernels


# ----------------------------------------------------------------------------- one cell


@dataclass
class CellProfile:
    """What `lstm-bench profile` finds for one cell: the mean of its profiled steps, and the unprofiled step."""

    cell: Cell
    steps: list[StepParts]
    step_ms: float  # unprofiled, timed as the suite times (median after warm-up)
    flops: int
    peak_gflops: float | None
    trace: Path | None = None

    @property
    def profiled_ms(self) -> float:
        """The profiled steps' mean wall time: what their parts' means add up to (a median would not)."""
        return statistics.fmean(s.wall_ms for s in self.steps)

    @property
    def overhead(self) -> float:
        """The profiled step over the unprofiled one."""
        return self.profiled_ms / self.step_ms

    @property
    def scale(self) -> float:
        """What the readers multiply the parts by to show them in the unprofiled step's milliseconds: the profiler's
        overhead spread over the parts in proportion to their size (its cost is per op and per range, so it
        overstates the parts with many small ops a little)."""
        return 1 / self.overhead

    def mean(self, get: Callable[[StepParts], float | None]) -> float | None:
        values = [get(s) for s in self.steps]
        return None if any(v is None for v in values) else statistics.fmean(values)

    def parts_ms(self) -> dict[str, float]:
        """Each part's mean over the profiled steps (profiled ms): they add up to the profiled step's mean wall."""
        return {c: self.mean(lambda s, c=c: s.parts_ms[c]) for c in CATEGORIES}

    def verdict(self) -> str:
        """launches/dispatch, arithmetic, or memory traffic (docs/profiling.md has the rule)."""
        parts = self.parts_ms()
        total = sum(parts.values()) or 1.0
        gemm = sum(parts[c] for c in ("input_gemm", "recurrent_gemm", "output_layer", "rnn_library")) / total
        kernel = self.mean(lambda s: s.kernel_ms)
        if kernel is not None:  # CUDA: the GPU waits for the host more than it works; else its GEMM kernels' share
            if 1 - kernel / self.profiled_ms >= DISPATCH_SHARE:
                return "launches/dispatch"
            gemm_kernel = self.mean(lambda s: s.gemm_kernel_ms) or 0.0
            share = self.peak_share_of_gemm_time(gemm_kernel / 1e3 * self.step_ms / self.profiled_ms)
            if kernel and gemm_kernel / kernel >= 0.5 and share is not None and share >= 0.5:
                return "arithmetic"
            return "memory traffic"
        if (parts["rest"] / total >= DISPATCH_SHARE
              or total * 1e3 / max(self.mean(lambda s: s.top_level_ops), 1) < SHORT_OP_US):
            return "launches/dispatch"  # most of the wall is outside ops, or an op lasts a few microseconds
        share = self.peak_share_of_gemm_time(gemm * self.step_ms / 1e3)
        if gemm >= 0.5 and share is not None and share >= 0.5:
            return "arithmetic"
        return "memory traffic"

    def peak_share_of_gemm_time(self, gemm_s: float) -> float | None:
        if not self.peak_gflops or gemm_s <= 0:
            return None
        return self.flops / gemm_s / 1e9 / self.peak_gflops

    def row(self) -> dict:
        """A row of profile.csv (PROFILE_COLUMNS)."""
        kernel, kernels = self.mean(lambda s: s.kernel_ms), self.mean(lambda s: s.kernels)
        achieved = self.flops / (self.step_ms / 1e3) / 1e9
        return self.cell.columns() | {
            "status": "ok", "step_ms": self.step_ms, "profiled_step_ms": self.profiled_ms,
            "profiler_overhead": self.overhead, "scale": self.scale, "profiled_steps": len(self.steps),
            **{f"part_{c}_ms": v for c, v in self.parts_ms().items()},
            "op_calls_per_step": self.mean(lambda s: s.op_calls), "top_level_ops_per_step":
                self.mean(lambda s: s.top_level_ops),
            "kernel_ms": kernel, "gemm_kernel_ms": self.mean(lambda s: s.gemm_kernel_ms), "kernels_per_step": kernels,
            "gpu_idle_share": None if kernel is None else max(1 - kernel / self.profiled_ms, 0.0),
            "flops_per_step": self.flops, "achieved_gflops": achieved, "peak_gflops": self.peak_gflops,
            "peak_share": achieved / self.peak_gflops if self.peak_gflops else None,
            "recurrence_floor_ms": recurrence_floor_ms(self.cell, self.peak_gflops) if self.peak_gflops else None,
            "verdict": self.verdict(), "trace": self.trace.name if self.trace else None,
        }


def activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def warmed(steps: int):
    """The profiler's schedule: one step under the profiler unrecorded (its own start-up costs land there: the first
    profiled step took up to 3x a later one), then `steps` recorded."""
    return schedule(wait=0, warmup=1, active=steps, repeat=1)


def profile_subject(subject: Subject, *, steps: int = 3, rounds: int = 20, trace: Path | None = None,
                    flops: int, peak_gflops: float | None) -> CellProfile:
    """After the suite's warm-up: `rounds` unprofiled steps timed (their median; half before and half after the
    profiled ones), and `steps` steps under the profiler (input shapes recorded, one unrecorded step first), exported
    as a Chrome/Perfetto trace to `trace` (gzipped where it ends in .gz)."""
    clock = subject.clock = RangeClock(subject)  # type: ignore[assignment]
    try:
        step = ranged_step(subject)
        subject.settle_scaler()
        warm_up(step)
        times: list[float] = []

        def timed(n: int) -> None:  # as the suite times: the step alone, after warm-up; the median of all
            for _ in range(n):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)

        timed((rounds + 1) // 2)  # half before the profiled steps and half after: a drift in the machine's speed
        with _quiet_native_stderr(), profile(activities=activities(subject.device), record_shapes=True,
                                             schedule=warmed(steps)) as prof:
            for _ in range(1 + steps):
                step()
                prof.step()
        timed(rounds // 2)  # meets both
        if trace is not None:
            prof.export_chrome_trace(str(trace))
    finally:
        clock.remove()
        subject.clock = None
    parts = attribute(prof, subject.cell.input_size)
    if subject.device.type == "cuda":
        device_figures(prof, parts)
    return CellProfile(subject.cell, parts, statistics.median(times) * 1e3, flops, peak_gflops, trace)


def profiled_step(subject: Subject) -> StepParts:
    """One step under the profiler, with the ranges: the suite's `what ran` step (names for its description, op calls
    and the parts for its row)."""
    clock = subject.clock = RangeClock(subject)  # type: ignore[assignment]
    try:
        with _quiet_native_stderr(), profile(activities=activities(subject.device), record_shapes=True,
                                             schedule=warmed(1)) as prof:
            for _ in range(2):
                ranged_step(subject)()
                prof.step()
    finally:
        clock.remove()
        subject.clock = None
    (parts,) = attribute(prof, subject.cell.input_size)
    parts.names = event_names(prof)
    if subject.device.type == "cuda":
        device_figures(prof, [parts])
    return parts


def row_columns(parts: StepParts) -> dict:
    """The suite row's columns from its profiled step: op calls per step and the parts (profiled ms)."""
    return {"op_calls_per_step": parts.op_calls} | {f"part_{c}_ms": v for c, v in parts.parts_ms.items()}


# ----------------------------------------------------------------------------- memory through the step

HOLDERS = ("parameters", "gradients", "optimizer state", "activations", "other")


@dataclass
class Timeline:
    """Bytes alive through one step by holder: times (ms from the step's start) and a series per HOLDERS, the phases'
    starts, and the memory model's prediction (None where it does not count the cell)."""

    cell_id: str
    times_ms: list[float]
    bytes_by_holder: dict[str, list[int]]
    phases_ms: dict[str, float]
    predicted_peak_bytes: int | None
    predicted_model_bytes: int | None
    predicted_peak_at: str | None
    source: str

    @property
    def peak_bytes(self) -> int:
        return max(sum(v[i] for v in self.bytes_by_holder.values()) for i in range(len(self.times_ms)))

    def write(self, out_dir: Path) -> Path:
        """memory-<cell id>.json.gz in out_dir (bench/readers/profiling.py draws it): gzipped, as a step of the
        chapter's Python loop frees and allocates thousands of times (300 KB of JSON for `scripted` at d2l)."""
        path = out_dir / f"memory-{self.cell_id}.json.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(vars(self) | {"peak_bytes": self.peak_bytes}, f)
        return path


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _start_blocks(subject: Subject) -> dict[int, tuple[str, int]]:
    """ptr -> (holder, bytes) of what the step finds alive."""
    params = list(subject.model.parameters())
    blocks: dict[int, tuple[str, int]] = {}
    for holder, tensors in (("other", subject.live_tensors()),
                            ("optimizer state", optimizer_tensors(subject.optimizer)),
                            ("gradients", [p.grad for p in params if p.grad is not None]), ("parameters", params)):
        for t in tensors:  # later holders win: a parameter is among the live tensors too
            blocks[_ptr(t)] = (holder, t.untyped_storage().nbytes())
    return blocks


def _timeline(events: list[tuple[int, int, int]], start: int, end: int, start_blocks: dict[int, tuple[str, int]],
              holder_of: Callable[[int, int, int | None], str]) -> tuple[list[float], dict[str, list[int]]]:
    """Replay (time ns, ptr, +bytes or -1 for a free) from start to end: bytes alive by holder after each event."""
    alive: dict[int, tuple[int, int]] = {}  # ptr -> (bytes, allocated at)
    frees: dict[tuple[int, int], int | None] = {}
    for t, ptr, size in events:  # first, when each block made in the step is freed (None: alive at the end)
        if size > 0:
            alive[ptr] = (size, t)
            frees[(ptr, t)] = None
        elif ptr in alive:
            frees[(ptr, alive.pop(ptr)[1])] = t
    totals = dict.fromkeys(HOLDERS, 0)
    for holder, size in start_blocks.values():
        totals[holder] += size
    times, series = [0.0], {h: [totals[h]] for h in HOLDERS}
    held: dict[int, tuple[str, int]] = dict(start_blocks)
    for t, ptr, size in events:
        if size > 0:
            holder = holder_of(ptr, t, frees.get((ptr, t)))
            held[ptr] = (holder, size)
            totals[holder] += size
        elif ptr in held:
            holder, nbytes = held.pop(ptr)
            totals[holder] -= nbytes
        else:
            continue
        times.append((t - start) / 1e6)
        for h in HOLDERS:
            series[h].append(totals[h])
    times.append((end - start) / 1e6)
    for h in HOLDERS:
        series[h].append(totals[h])
    return times, series


def memory_timeline(subject: Subject) -> Timeline:
    """The bytes alive across one training step, by holder. On a CPU from the profiler's allocation events
    (profile_memory=True); on CUDA from the caching allocator's history (torch.cuda.memory._record_memory_history),
    whose snapshot `subject` keeps in `last_snapshot` for pytorch.org/memory_viz. A block is activations when autograd
    saved it (saved_tensors_hooks) and it outlived the forward, gradients or optimizer state when it is one at the
    step's end."""
    saved: set[int] = set()
    start_blocks = _start_blocks(subject)
    clock = subject.clock = RangeClock(subject)  # type: ignore[assignment]
    step = ranged_step(subject)

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.add(_ptr(t))
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if subject.device.type == "cuda":
                sync(subject.device)
                torch.cuda.memory._record_memory_history(max_entries=1_000_000)
                try:
                    step()
                    snapshot = torch.cuda.memory._snapshot()
                finally:
                    torch.cuda.memory._record_memory_history(enabled=None)
                subject.last_snapshot = snapshot  # type: ignore[attr-defined]
                index = subject.device.index if subject.device.index is not None else torch.cuda.current_device()
                trace = snapshot["device_traces"][index]
                events = [(int(e["time_us"]) * 1000, int(e["addr"]), int(e["size"]) if e["action"] == "alloc" else -1)
                          for e in trace if e["action"] in ("alloc", "free_completed")]
                start, end = (events[0][0], events[-1][0]) if events else (0, 0)
                phases: dict[str, float] = {}
                backward_at = None
                source = "the CUDA caching allocator's history (torch.cuda.memory._record_memory_history)"
            else:
                with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    step()  # unrecorded: the profiler cannot size a free of a block made before it started
                    start_blocks = _start_blocks(subject)
                    saved.clear()
                    step()
                nodes = list(_torch_ops(prof.profiler.kineto_results.experimental_event_tree()))
                start, end = max((n.start_time_ns, n.end_time_ns) for n in nodes if n.name == STEP)
                nodes = [n for n in nodes if start <= n.start_time_ns <= end]
                phases = {n.name: (n.start_time_ns - start) / 1e6 for n in nodes if n.name in PHASE_RANGES}
                backward_at = next((n.start_time_ns for n in nodes if n.name == BACKWARD), None)
                events = sorted((t, ptr, size if size > 0 else -1) for t, ptr, size, _ in cpu_allocation_events(prof)
                                if start <= t <= end)
                source = "the profiler's CPU allocation events (profile_memory=True)"
    finally:
        clock.remove()
        subject.clock = None
    params = list(subject.model.parameters())
    grads = {_ptr(p.grad) for p in params if p.grad is not None}
    optimizer = {_ptr(t) for t in optimizer_tensors(subject.optimizer)}

    def holder_of(ptr: int, made: int, freed: int | None) -> str:
        if freed is None and ptr in grads:
            return "gradients"
        if freed is None and ptr in optimizer:
            return "optimizer state"
        if ptr in saved and (backward_at is None or freed is None or freed > backward_at):
            return "activations"
        return "other"

    times, series = _timeline(events, start, end, start_blocks, holder_of)
    try:
        p: Prediction = predict(subject.cell)
        predicted = (p.peak_bytes, p.model_bytes, p.peak_at)
    except NotModelled:  # an implementation or configuration the model does not count (a bug still raises)
        predicted = (None, None, None)
    return Timeline(subject.cell.id, times, series, phases, *predicted, source=source)
