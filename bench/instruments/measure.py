"""The instruments: build a cell's model and step, time it, and measure its memory.

Time statistics come from pytest-benchmark (bench/test_suite.py); this module gives it a step to
time that synchronizes CUDA before it returns, a warm-up that runs until step times settle, the
machine-speed probe timed before every round, and the memory pass, which runs apart from the
timed rounds.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import lstm_impls

from ..d2l.model import RNNModel, d2l_init_, forward_step, make_optimizer, train_step
from ..grid import Cell
from .env import nvml_handle


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PHASES = ("forward", "backward", "optimizer")


class PhaseClock:
    """The seconds of each phase of a step (`mark(phase)` as it ends), the device synchronized at each mark so a
    phase's time is its own work, not what the one before left queued."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self.last = 0.0

    def start(self) -> None:
        sync(self.device)
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.seconds[phase].append(now - self.last)
        self.last = now

    def reset(self) -> None:
        for times in self.seconds.values():
            times.clear()


#: where a session's time goes: starting the runtimes once (bench/instruments/measure.py start_runtimes); then in the
#: order a cell meets them: its compile caches made ready (and reset after), building the model (TorchScript scripts
#: here), its first call (Inductor compiles here), warm-up to steady steps, what ran (the profiler), the timed rounds
#: and the machine-speed probe between them, the memory pass, the memory model's prediction, FLOP counting, releasing
#: its tensors, writing its row; "other" is the rest of the session's wall time (collection, pytest-benchmark)
TIME_PHASES = ("start-up", "caches", "build", "first call", "warm-up", "what ran", "timed rounds", "probe",
               "memory pass", "memory model", "FLOP counting", "release", "row", "other")


class Stopwatch:
    """Wall seconds by phase (TIME_PHASES), summed over a session's cells: where a run's time goes, to size a sweep."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def by_phase(self) -> dict[str, float]:
        """Seconds by phase so far, "other" the session's wall time the phases do not cover, and "total"."""
        total = time.perf_counter() - self.started
        known = {name: round(self.seconds[name], 3) for name in TIME_PHASES if name in self.seconds}
        return known | {"other": round(max(total - sum(self.seconds.values()), 0.0), 3), "total": round(total, 3)}


#: the most steps float16's GradScaler may skip before a cell's step counts (its scale starts at 2**16 and halves
#: on each skip: 40 reach 2**-24, below which no gradient is representable)
SCALER_SETTLE_STEPS = 40
#: how many steps the memory pass measures before it gives up finding one whose update ran (float16)
MEMORY_ATTEMPTS = 5


class Subject:
    """One cell's model, optimizer and fixed minibatch; `step()` runs one step and carries the state.

    The suite trains with d2l's plain SGD; `optimizer` (bench.d2l.model.OPTIMIZERS) lets the memory
    model's checks measure the state other optimizers keep.
    """

    def __init__(self, cell: Cell, seed: int = 0, lr: float = 1.0, optimizer: str = "sgd"):
        self.cell, self.device = cell, torch.device(cell.device)
        self.model = d2l_init_(RNNModel(cell.impl, cell.vocab_size, cell.hidden_size, device=self.device,
                                        dtype=cell.torch_dtype, **cell.config), seed=seed)
        self.optimizer = make_optimizer(optimizer, self.model, lr) if cell.mode != "forward" else None
        self.runner: torch.nn.Module = self.model  # what a step calls: the model, or a wrapper of it (DDP)
        g = torch.Generator().manual_seed(seed)
        shape = (cell.batch_size, cell.seq_len)
        self.X = torch.randint(0, cell.vocab_size, shape, generator=g).to(self.device)
        self.Y = torch.randint(0, cell.vocab_size, shape, generator=g).to(self.device)
        self.lengths = cell.draw_lengths(g)  # None: every sequence T long; a CPU tensor, as packing takes it
        self.amp = cell.amp_dtype
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if cell.amp == "float16" and self.optimizer is not None else None)
        self.state = None
        self.loss: Tensor | None = None  # the last step's
        self.clock: PhaseClock | None = None  # timing_phases(): each step's phases into clock.seconds
        self.skipped = False  # whether float16's GradScaler skipped the last step's update (its gradients overflowed)

    @property
    def real_tokens(self) -> int:
        """The tokens of a step's batch that are not padding."""
        return int(self.lengths.sum()) if self.lengths is not None else self.cell.padded_tokens

    def step(self) -> Tensor:
        """One training (or inference) step; returns after the device has finished it."""
        if self.clock is not None:
            self.clock.start()
        batch = {"lengths": self.lengths, "amp": self.amp}
        if self.optimizer is not None:
            scale = self.scaler.get_scale() if self.scaler is not None else None
            self.loss, self.state = train_step(self.runner, self.optimizer, self.X, self.Y, self.state,
                                               clock=self.clock, scaler=self.scaler, **batch)
            self.skipped = scale is not None and self.scaler.get_scale() < scale  # backed off: no update ran
        else:
            self.loss, self.state = forward_step(self.runner, self.X, self.Y, self.state, clock=self.clock, **batch)
        sync(self.device)
        return self.loss

    def settle_scaler(self, limit: int = SCALER_SETTLE_STEPS) -> int:
        """Step until float16's GradScaler takes a step (it halves its scale and skips the update on each step
        whose gradients overflow, from 2**16 at first); returns how many steps that took (0 without a scaler).
        Until then no update runs: no optimizer state, a shorter step, which is not the training step."""
        for n in range(limit if self.scaler is not None else 0):
            self.step()
            if not self.skipped:
                return n + 1
        if self.scaler is not None:
            raise RuntimeError(f"float16's GradScaler skipped {limit} steps in a row (every gradient overflows)")
        return 0

    def timing_phases(self) -> PhaseClock:
        """From now on each step also times its phases (forward, backward, optimizer) apart."""
        self.clock = PhaseClock(self.device)
        return self.clock

    def diverged(self) -> str | None:
        """Why the timings are of a broken model (its loss is inf or nan), or None."""
        if self.loss is not None and not bool(torch.isfinite(self.loss)):
            return f"the loss is {self.loss.item()} (not finite): the model diverged, its step times mean little"
        return None

    def live_tensors(self) -> list[Tensor]:
        """What the step finds alive when it starts: weights, gradients, optimizer state, batch, state."""
        params = list(self.model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        extra = [self.lengths] if self.lengths is not None else []
        if self.scaler is not None:  # its scale and growth tracker, made at its first step
            extra += [t for t in (self.scaler._scale, self.scaler._growth_tracker) if t is not None]
        return params + grads + optimizer_tensors(self.optimizer) + [self.X, self.Y, *extra] + list(self.state or ())

    def release(self) -> None:
        """Drop every tensor, so the next cell starts from an empty allocator."""
        self.model = self.runner = self.optimizer = self.X = self.Y = self.state = self.loss = self.scaler = None
        release_memory()


@contextlib.contextmanager
def settled_subject(cell: Cell, optimizer: str = "sgd") -> Iterator[Subject]:
    """A cell's Subject whose memory has settled, compiled afresh for its shape as the suite compiles every
    cell, released afterwards. Two steps settle every implementation but scripted, whose profiling executor
    optimizes the graph after its profiling runs (six steps); then float16's GradScaler until it takes a step."""
    torch.compiler.reset()
    subject = Subject(cell, optimizer=optimizer)
    try:
        for _ in range(6 if cell.impl == "scripted" else 2):
            subject.step()
        subject.settle_scaler()
        yield subject
    finally:
        subject.release()


def release_memory() -> None:
    """Free what a cell left behind. The collection walks only what was made since start_runtimes froze the
    start-up's objects (torch's, the compilers'): walking those too took 0.1-0.3 s a collection, twice a cell."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[Tensor]:
    if optimizer is None:
        return []
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)]


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind tensors (views and repeats count once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def fresh_compile_caches() -> Iterator[None]:
    """Inductor's and Triton's caches, on disk and in memory, fresh for the duration: a compile inside
    pays its full cost whatever compiled before, in this process or an earlier run."""
    with warnings.catch_warnings():  # Inductor's first import uses torch.jit.script_method, deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        from torch._inductor.utils import fresh_cache  # what torch's own benchmarks use to compile cold

    torch.compiler.reset()
    with fresh_cache():
        yield
    torch.compiler.reset()


#: set by `lstm-bench run` for its worker processes (bench/workers.py): a directory where each cell's compile caches
#: live for the run, so that the first process compiles each cell cold and the others warm from its cache
COMPILE_CACHE_ENV = "LSTM_BENCH_COMPILE_CACHE"


@contextlib.contextmanager
def cell_compile_caches(where: Path, cold: bool) -> Iterator[None]:
    """Inductor's and Triton's on-disk caches in `where` for the duration (emptied first when `cold`: a compile pays
    its full cost), torch.compile's in-memory state reset before and after. A run's first process compiles a cell
    cold into its directory and the later ones warm from it: cold, each later process paid Inductor again (60 s of
    a default run's second process on the project's 2-core CPU), as no cache outlived the first's cells."""
    from torch._inductor.utils import clear_caches

    if cold:
        shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    torch.compiler.reset()
    clear_caches()
    os.environ |= {"TORCHINDUCTOR_CACHE_DIR": str(where), "TRITON_CACHE_DIR": str(where / "triton")}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.compiler.reset()
        clear_caches()


@contextlib.contextmanager
def cell_caches(cell: Cell, full: bool) -> Iterator[None]:
    """The compile caches a cell runs in: in `lstm-bench run`, its own directory of the run's (COMPILE_CACHE_ENV),
    cold in the process that measures everything (`full`) and warm in the others; else fresh for a full
    measurement (its first call cold) and as they are on disk for timing only. TorchScript's plans are reused
    from the process's earlier cells (lstm_impls.reuse_compiled): its ~10 s of optimizing passes, paid in every
    scripted cell, were a fifth of a default run, and they are the same whatever the shape; the first scripted
    cell of a process pays and reports them."""
    shared = os.environ.get(COMPILE_CACHE_ENV)
    if shared:
        caches = cell_compile_caches(Path(shared) / cell.id, cold=full)
    else:
        caches = fresh_compile_caches() if full else compile_reset()
    with caches, lstm_impls.reuse_compiled():
        yield


@contextlib.contextmanager
def compile_reset() -> Iterator[None]:
    """torch.compile's in-memory state reset before and after (each cell compiles for its own shape, and no
    cell counts against another's recompile limit); the on-disk caches stay as they are."""
    torch.compiler.reset()
    try:
        yield
    finally:
        torch.compiler.reset()


def start_runtimes(device: torch.device, runtimes: Iterable[str] = ()) -> None:
    """Pay the process's one-time start-up costs before the first cell, so that no cell is charged them.

    On CUDA: the context, cuBLAS handles for the forward's thread and for autograd's backward thread,
    cuDNN's handle; their workspaces stay allocated and count as library_bytes. For the runtimes
    named (LSTMImpl.runtime): TorchScript's and Inductor's first use (imports, pass registration,
    the C++ toolchain probe). The toy compiles through the on-disk caches as they are: cold it cost 12-14 s in
    every process, which no cell's figure needs (a cell's own compile is cold or warm as its caches decide).
    """
    def toy(x: Tensor) -> Tensor:
        return torch.sigmoid(x @ x) * x

    x = torch.randn(8, 8, device=device, requires_grad=True)
    lstm = torch.nn.LSTM(8, 8, device=device)
    lstm(x.unsqueeze(1))[0].sum().backward()
    if "inductor" in runtimes:
        with compile_reset():
            torch.compile(toy)(x).sum().backward()
    if "torchscript" in runtimes:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13; this start-up is ours
            warnings.filterwarnings("ignore", message=r".*torch\.jit")
            scripted = torch.jit.script(toy)
        for _ in range(3):  # the profiling executor optimizes on the second call
            scripted(x).sum().backward()
    sync(device)
    gc.collect()
    gc.freeze()  # what start-up made lives on: no later collection walks it (release_memory)
    atexit.unregister(gc.unfreeze)  # once, however often a process starts its runtimes
    atexit.register(gc.unfreeze)  # but the exit's does: frozen, triton's bindings print hundreds of "leaked" lines


def time_first_step(step: Callable[[], object]) -> float:
    """Milliseconds of the first call, which includes scripting or compiling."""
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def warm_up(step: Callable[[], object], *, window: int = 3, tolerance: float = 0.15, min_steps: int = 3,
            max_steps: int = 60, max_seconds: float = 120.0) -> list[float]:
    """Run step until the last `window` step times lie within `tolerance` of their median.

    TorchScript's profiling executor and torch.compile's recompiles make the first few calls
    seconds long; timing before they settle would report them. Returns each warm-up step's seconds.
    """
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < max_steps and time.perf_counter() < deadline:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if len(times) >= max(min_steps, window):
            last = times[-window:]
            mid = statistics.median(last)
            if max(last) - min(last) <= tolerance * mid:
                break
    return times


def timed_rounds(steady_s: float, max_time_s: float, min_rounds: int) -> int:
    """How many rounds to time: as many as fit in max_time_s at steady_s each, at least min_rounds
    (pytest-benchmark's own rule for `benchmark(fn)`, which `pedantic` leaves to its caller)."""
    return max(min_rounds, math.ceil(max_time_s / max(steady_s, 1e-9)))


def make_probe(device: torch.device, hidden_size: int) -> Callable[[], float]:
    """The machine-speed probe: a timer (seconds) of a fixed small workload on device, as a training
    step is made: small GEMMs, pointwise ops, autograd, with weights of the cell's hidden size (so
    they take as much cache as the cell's). It uses none of this project's code.

    The suite times it around every round of every cell. On a shared machine the speed drifts by
    tens of percent within seconds (other tenants, clocks), so one run's step times differ from
    another's by more than the code does; the step and the probes around it ran on the same
    machine, and `lstm-bench compare` compares step / probe between runs. The probe does not change
    when the project does, so a slower implementation stays slower relative to it.
    """
    H = hidden_size
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(H, 2 * H, generator=g) / H**0.5).to(device).requires_grad_()
    x = torch.randn(32, H, generator=g).to(device)

    def workload() -> None:
        h = x
        for _ in range(12):  # a recurrence of 12 steps: two GEMMs and three pointwise ops each
            h = torch.tanh(h @ W[:, :H] + 0.1) * torch.sigmoid(h @ W[:, H:])
        h.sum().backward()
        W.grad = None

    def probe() -> float:
        sync(device)
        start = time.perf_counter()
        workload()
        sync(device)
        return time.perf_counter() - start

    workload()  # first call: allocator and kernels warm
    return probe


def relative_rounds(rounds_s: list[float], probe_s: list[float]) -> list[float]:
    """Each round's time over the mean of the probe just before it and just after it (the next round's,
    or the one after the last round; runs that timed none after the last take its own before): the step
    in units of the machine's speed then."""
    n = len(rounds_s)
    after = [*probe_s[1:n], probe_s[n] if len(probe_s) > n else probe_s[-1]]
    return [2 * step / (before + later) for step, before, later in zip(rounds_s, probe_s, after)]


def startup_ms(first_step_ms: float, warmup_s: list[float], steady_s: float) -> float:
    """The cost to reach steady state: the first call and the warm-up, beyond as many steady steps.

    It is what scripting, compiling, autotuning and profiling executors cost the first user of a
    shape, where first_step_ms alone misses recompiles and profiling runs after the first call.
    """
    return first_step_ms + (sum(warmup_s) - (1 + len(warmup_s)) * steady_s) * 1e3


MEASURED = "lstm_bench::measured"


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """The profiler's C++ side prints two lines at every start and stop (kineto's "USDT: ... profiler_start"),
    which no setting turns off; a command's stderr is for its own messages, so file descriptor 2 goes to
    /dev/null meanwhile. Python exceptions are unaffected (they are raised, not printed, inside)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_allocation_timeline(fn: Callable[[], object]) -> list[tuple[int, int, str]]:
    """Every CPU allocation and free of one call of fn, in time order: (ns since the call began,
    bytes: + allocated, - freed, the op that made it).

    torch has no CPU peak counter; the profiler records every allocation and free with its time
    (profile_memory=True). It cannot size a free of a block allocated before it started, so fn runs
    twice and only the second call is kept: whatever it frees, the profiler saw allocated.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        with record_function(MEASURED):
            fn()
    windows = [(n.start_time_ns, n.end_time_ns) for n in profiled_nodes(prof) if n.name == MEASURED]
    if not windows:
        raise RuntimeError(f"the profiler recorded no {MEASURED!r} range")
    (start, end) = windows[0]
    events = sorted(cpu_allocation_events(prof), key=lambda e: (e[0], e[2], e[3]))  # at one ns: frees first
    return [(when - start, size, op) for when, _, size, op in events if start <= when <= end]


def profiled_nodes(prof) -> Iterator:
    """Every node of a finished profile's event tree (ops, ranges, allocations), parents before their children."""
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def cpu_allocation_events(prof) -> list[tuple[int, int, int, str]]:
    """Every CPU allocation and free a finished profile recorded (profile_memory=True), in no order: (ns, the block's
    address, bytes: + allocated, - freed, the op it sits under in the tree: the one that made or freed it)."""
    from torch._C._profiler import _EventType

    events = []
    stack = [(node, "") for node in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        node, parent = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            f = node.extra_fields
            events.append((node.start_time_ns, f.ptr, f.alloc_size, parent))
        stack.extend((child, node.name) for child in node.children)
    return events


def running_peak(sizes: Iterable[int]) -> int:
    """The highest running sum of allocations (+) and frees (-), from 0: a timeline's peak above its start."""
    peak = running = 0
    for size in sizes:
        running += size
        peak = max(peak, running)
    return peak


def cpu_peak_above_start(fn: Callable[[], object]) -> int:
    """Most bytes the CPU allocator held at once during a call of fn, above what it held when it began."""
    return running_peak(size for _, size, _ in cpu_allocation_timeline(fn))


@dataclass
class Memory:
    """One step's memory. peak_bytes counts what was live when the step began (start_bytes), library
    memory included; library_bytes is what libraries held before the step that is no tensor of the
    subject (CUDA: cuBLAS/cuBLASLt workspaces, kept per handle and stream; a CPU: none)."""

    peak_bytes: int
    start_bytes: int
    library_bytes: int = 0
    peak_reserved_bytes: int | None = None
    process_used_bytes: int | None = None  # NVML: this process's device memory (context included)
    context_bytes: int | None = None  # process_used_bytes minus the caching allocator's reserved bytes
    notes: str | None = None  # what could not be measured, and why


def cuda_peak(fn: Callable[[], object], device: torch.device, live: Iterable[Tensor] = ()) -> Memory:
    """Peak allocated and reserved bytes on device while fn runs, from the caching allocator's stats.

    Before fn, what is allocated beyond the storages of `live` is library memory (workspaces the
    libraries keep across calls); after it, NVML's figure for this process minus what the
    allocator reserves is the CUDA context (and anything else allocated outside the allocator).
    """
    release_memory()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    library = start - storage_bytes(t for t in live if t.device.type == "cuda")
    fn()
    sync(device)
    used, note = nvml_process_used_bytes(device)
    return Memory(peak_bytes=torch.cuda.max_memory_allocated(device), start_bytes=start, library_bytes=library,
                  peak_reserved_bytes=torch.cuda.max_memory_reserved(device), process_used_bytes=used,
                  context_bytes=None if used is None else used - torch.cuda.memory_reserved(device), notes=note)


def measure_memory(subject: Subject) -> Memory:
    """Peak memory of one step of subject, on its device: one whose update ran (a step float16's GradScaler
    skips holds no optimizer temporaries; it is measured again)."""
    for _ in range(MEMORY_ATTEMPTS):
        if subject.device.type == "cuda":
            memory = cuda_peak(subject.step, subject.device, subject.live_tensors())
        else:
            start = storage_bytes(subject.live_tensors())
            memory = Memory(peak_bytes=start + cpu_peak_above_start(subject.step), start_bytes=start)
        if not subject.skipped:
            return memory
    raise RuntimeError(f"float16's GradScaler skipped the update of {MEMORY_ATTEMPTS} measured steps in a row (the "
                       "gradients overflow: has the model diverged?): no training step to measure")


def nvml_process_used_bytes(device: torch.device) -> tuple[int | None, str | None]:
    """This process's device memory as NVML sees it (CUDA context included), or None and why not.

    NVML lists compute processes by their PID as the host sees it: inside a container with its
    own PID namespace, or where the driver withholds per-process figures, there is no answer.
    """
    import pynvml

    with nvml_handle(device) as handle:
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    mine = [p for p in processes if p.pid == os.getpid()]
    if not mine:
        return None, (f"NVML lists no compute process with this PID ({os.getpid()}) among {len(processes)} on "
                      "the device (a container's PID namespace?): process and context bytes not measured")
    if mine[0].usedGpuMemory is None:
        return None, "NVML withholds per-process memory here: process and context bytes not measured"
    return int(mine[0].usedGpuMemory), None


def saved_activation_bytes(subject: Subject) -> int:
    """Bytes of the storages autograd saves for backward during one step (parameters excluded)."""
    params = {(p.device, p.untyped_storage().data_ptr()) for p in subject.model.parameters()}
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        if (t.device, t.untyped_storage().data_ptr()) not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        subject.step()
    return storage_bytes(saved)


@dataclass
class Breakdown:
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    workspace_bytes: int  # the rest of the peak: batch, state, logits, the step's temporaries


def breakdown(subject: Subject, peak_bytes: int, library_bytes: int = 0) -> Breakdown:
    """Split a step's peak into its parts; with library_bytes they add up to peak_bytes by construction
    of the last, so workspace_bytes is the step's own temporaries, not what libraries keep."""
    params = list(subject.model.parameters())
    parts = {
        "param_bytes": storage_bytes(params),
        "grad_bytes": storage_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_bytes": storage_bytes(optimizer_tensors(subject.optimizer)),
        "activation_bytes": saved_activation_bytes(subject),
    }
    return Breakdown(**parts, workspace_bytes=peak_bytes - library_bytes - sum(parts.values()))
