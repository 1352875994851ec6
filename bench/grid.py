"""The one place that declares the benchmark grid, its option values and the CSV schema."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass

import torch

import lstm_impls
from bench.instruments.malloc import POLICIES as MALLOC_POLICIES
from lstm_impls.base import CONFIG_DEFAULTS

# The default sizes: small on a CPU; DeepBench-like on a GPU (hidden 256-2048, batch 16-128). By default a run
# varies them one at a time through the d2l config (GRID_SHAPES' "cross": batch at hidden 256, hidden at batch 32:
# 5 points on a CPU, 7 on a GPU), which answers how memory and time grow with each; --grid full takes every
# combination (9 and 16), as a run given --batch-sizes or --hidden-sizes does.
DEFAULT_GRID = {
    "cpu": {"batch_sizes": (16, 32, 64), "hidden_sizes": (128, 256, 512)},
    "cuda": {"batch_sizes": (16, 32, 64, 128), "hidden_sizes": (256, 512, 1024, 2048)},
}
#: fresh processes that each time every cell (`lstm-bench run --processes`; bench/workers.py), and torch's CPU
#: threads when --threads is not given (None: torch's own choice). One thread on a CPU, as torch.utils.benchmark
#: does: a second thread on a shared 2-core machine made the same cell's median move 1.65x between runs.
#: Three: every process pays TorchScript's optimization of each scripted cell again (about 10 s a cell on the
#: project's 2-core CPU), so two would be 100 s cheaper, but with two (and up to 4 where they disagreed) three
#: default runs agreed within 5% in 23 of 30 cells, and two processes that agree by chance settle a cell they
#: should not (docs/measuring.md has the figures).
DEFAULT_PROCESSES = {"cpu": 3, "cuda": 3}
#: and at most this many in all: past the first ones, `lstm-bench run` adds a process at a time for the cells whose
#: processes have not settled (bench/readers/stats.py SETTLED_WITHIN), timing those only (`--max-processes`)
DEFAULT_MAX_PROCESSES = {"cpu": 5, "cuda": 5}
#: the seconds a run plans for (`lstm-bench run --budget-s`; 0 given: no budget). The first BUDGET_FREE_PROCESSES
#: always run; each later one, a first --processes one too, times every cell where they fit in what is left, else
#: the least settled cells that fit, at what the earlier timing processes took for them (bench/workers.py
#: plan_added), with REPORT_RESERVE_S kept back for the summary and the report. The CPU's is
#: the "five minutes" a default run is asked to answer in; a GPU's is within the nightly job's (docs/sweeps.md).
DEFAULT_BUDGET_S = {"cpu": 300.0, "cuda": 1200.0}
#: the processes that run whatever the budget: a spread between processes needs two. On a machine running 1.3-1.6x
#: slower, a default run's first three processes took 278-322 s (docs/measuring.md): the third now fits the budget.
BUDGET_FREE_PROCESSES = 2
#: the report's 5-7 s on the project's 2-core CPU, and room for the estimates' error
REPORT_RESERVE_S = 15.0
#: timed rounds per cell at least, however long a step (pytest-benchmark's 5 says little about a spread): in one
#: process, or split between a run's processes; --benchmark-min-rounds=N sets another, per process
MIN_ROUNDS = 20
DEFAULT_THREADS = {"cpu": 1, "cuda": None}
D2L = {"batch_size": 32, "seq_len": 35, "vocab_size": 28, "hidden_size": 256}  # the chapter's config
#: a cell at the d2l config's sizes (is_d2l) times this many times the rounds and seconds of rounds the others do, in
#: every process: its row is the answer (the report's first table, the README's). Three default runs at 1x agreed
#: there within 2.9-5.6% (scripted the widest: its three processes in one run read 6.50, 5.89 and 5.62 times the
#: probe, 11-15 rounds each, their IQRs 13-17%), where a process's own median was as uncertain as the spread between
#: processes; the six cells' 2x costs ~3.5 s a process. At 2x: within 1.0-2.6%, and up to 6-7.7% where the machine
#: ran 1.3-1.6x slower in some of the runs (docs/measuring.md).
D2L_ROUNDS_FACTOR = 2
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("train", "forward")
#: --amp: torch.autocast's compute dtype around the forward and loss, float32 parameters ("none": no autocast)
AMPS = ("none", "bfloat16", "float16")
#: `lstm-bench check --accuracy`'s precisions: a native dtype, or float32 weights under autocast in one
PRECISIONS = ("float32", "bfloat16", "float16", "autocast-bfloat16", "autocast-float16")
#: its sequence lengths by default
ACCURACY_SEQ_LENS = (10, 100, 1000)
#: --grid: "cross", the batch sizes at one hidden size and the hidden sizes at one batch size (the d2l config's,
#: or the middle of each list); "full", every combination
GRID_SHAPES = ("cross", "full")
FULL_LENGTHS = "full"  # --lengths: every sequence T steps long; "uniform:F" draws each one's length (Cell.lengths)
DDP_MODE = "ddp"  # rows of `lstm-bench ddp`: a training step under DistributedDataParallel, per world size
STATUSES = ("ok", "oom", "error", "unsupported", "nonfinite")  # nonfinite: the loss became inf or nan

#: where a step's wall time goes (bench/instruments/profiling.py attribute): parts that do not overlap and add up to
#: it; "device_wait" is the host waiting for the GPU at the phases' ends (0 on a CPU), "rest" the wall time inside no
#: op (Python, dispatch, the autograd engine)
TIME_PARTS = ("input_gemm", "recurrent_gemm", "output_layer", "rnn_library", "pointwise", "copies", "optimizer",
              "other_ops", "device_wait", "rest")

# One row per cell of measurements.csv. Units are in the names; empty means "not measured here".
COLUMNS = (
    # the cell
    "impl", "device", "dtype", "mode", "batch_size", "hidden_size", "input_size", "seq_len", "world_size",
    "num_layers", "bidirectional", "proj_size", "dropout", "batch_first", "lengths", "amp",
    "status", "error", "description",
    # time (pytest-benchmark's statistics over the timed rounds, after warm-up; GC off in the rounds)
    "step_ms_median", "step_ms_iqr", "step_ms_min", "step_ms_mean", "step_ms_stddev", "rounds", "gc_in_rounds",
    "warmup_steps", "tokens_per_s", "first_step_ms", "startup_ms",
    # the tokens of a step's batch: real ones (tokens_per_s counts these), and with the padding B * T
    "real_tokens", "padded_tokens",
    # the step's phases, timed apart in the same rounds (the device synchronized between them): forward with the
    # loss, backward, optimizer (gradient clipping and the update); their medians
    "forward_ms_median", "backward_ms_median", "optimizer_ms_median",
    # the machine-speed probe timed before each round (bench/instruments/measure.py make_probe): its median,
    # and the median of step / probe over the rounds, which `compare` compares between runs
    "probe_ms_median", "relative_step_median",
    # between fresh processes (bench/workers.py): how many timed the cell, each one's median step time (';'-joined),
    # their spread (sd of their logs, about a CV in %) and the 95% interval of their typical (geometric mean) median;
    # each one's relative_step_median and their spread: what `compare` judges where the machine's speed moved
    "processes", "step_ms_processes", "step_ms_between_pct", "step_ms_ci_low", "step_ms_ci_high",
    "relative_step_processes", "relative_between_pct",
    # memory, from a separate pass
    "peak_bytes", "peak_reserved_bytes", "start_bytes", "library_bytes", "process_used_bytes", "context_bytes",
    "param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes", "workspace_bytes",
    # the memory model's prediction for the cell (bench/instruments/memory/)
    "predicted_peak_bytes", "predicted_activation_bytes",
    # work; for ddp rows, tokens/s of all ranks over world_size times one rank's alone
    "flops_per_step", "flops_counted", "achieved_gflops", "scaling_efficiency",
    # distance to the limit: achieved_gflops over the device's own GEMM peak in the cell's compute dtype (measured
    # once per run, environment.json gemm_peak_gflops); ATen ops a step dispatches (nested ones included)
    "peak_share", "op_calls_per_step",
    # where the time goes, from the `what ran` profiled step: its wall time in parts that add up to it (TIME_PARTS;
    # profiled milliseconds, the profiler's overhead included: the report scales them to the step's median)
    *(f"part_{part}_ms" for part in TIME_PARTS),
    # pinned settings, and what the row cannot say
    "tf32", "threads", "run_id", "notes",
)  # fmt: skip


# One row per (implementation, precision, T) of accuracy.csv (bench/instruments/accuracy.py): normwise relative
# errors against nn.LSTM in float64, the outputs' the worst of y, h, c, the gradients' the worst of all of them.
ACCURACY_COLUMNS = (
    "impl", "precision", "device", "seq_len", "batch_size", "input_size", "hidden_size", "status", "error",
    "outputs_max_rel", "outputs_mean_rel", "grads_max_rel", "grads_mean_rel", "worst",
)  # fmt: skip
ACCURACY_CSV = "accuracy.csv"

# One row per cell of `lstm-bench profile`'s profile.csv (bench/instruments/profiling.py CellProfile.row): the step
# unprofiled (median after the suite's warm-up) and profiled, the parts of the profiled steps' mean (scaled by `scale`
# to the unprofiled step where the profiler adds more than 5%), op counts, CUDA's kernel figures, the distance to the
# GEMM peak, the verdict, the trace's file name.
PROFILE_COLUMNS = (
    "impl", "device", "dtype", "mode", "batch_size", "hidden_size", "input_size", "seq_len", "world_size",
    "num_layers", "bidirectional", "proj_size", "dropout", "batch_first", "lengths", "amp", "status", "error",
    "step_ms", "profiled_step_ms", "profiler_overhead", "scale", "profiled_steps",
    *(f"part_{part}_ms" for part in TIME_PARTS),
    "op_calls_per_step", "top_level_ops_per_step", "kernel_ms", "gemm_kernel_ms", "kernels_per_step",
    "gpu_idle_share",
    "flops_per_step", "achieved_gflops", "peak_gflops", "peak_share", "recurrence_floor_ms", "verdict", "trace",
)  # fmt: skip
PROFILE_CSV = "profile.csv"

#: the columns that name a cell: two rows with equal values here measure the same thing.
CELL_KEY = ("impl", "device", "dtype", "mode", "batch_size", "hidden_size", "input_size", "seq_len", "world_size",
            *CONFIG_DEFAULTS, "lengths", "amp")
#: a row written before a key column existed reads as that column's default
KEY_DEFAULTS = {"world_size": 1, **CONFIG_DEFAULTS, "lengths": FULL_LENGTHS, "amp": "none"}


def at_d2l_sizes(batch_size: int, seq_len: int, hidden_size: int, vocab_size: int) -> bool:
    """The chapter's sizes: batch 32, T 35, hidden 256, vocabulary 28."""
    return (batch_size, seq_len, hidden_size, vocab_size) == (
        D2L["batch_size"], D2L["seq_len"], D2L["hidden_size"], D2L["vocab_size"])


def is_d2l(cell: Cell) -> bool:
    """A cell at the chapter's sizes: the answer's cells, where every run draws memory through a step and times twice
    the rounds (D2L_ROUNDS_FACTOR)."""
    return at_d2l_sizes(cell.batch_size, cell.seq_len, cell.hidden_size, cell.vocab_size)


def cell_rounds(cell: Cell, min_rounds: int, max_time_s: float) -> tuple[int, float]:
    """The least rounds and the seconds of rounds a cell times in a process (pytest-benchmark's --benchmark-min-rounds
    and --benchmark-max-time): D2L_ROUNDS_FACTOR times those at the d2l config."""
    factor = D2L_ROUNDS_FACTOR if is_d2l(cell) else 1
    return factor * min_rounds, factor * max_time_s


class OptionError(ValueError):
    """A bad option value: reported as one line with exit code 2 (by the CLI and the pytest plugin)."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: what to build and how to run it."""

    impl: str
    device: str
    dtype: str
    mode: str
    batch_size: int
    hidden_size: int
    seq_len: int
    vocab_size: int
    world_size: int = 1  # processes that train it data-parallel (DDP_MODE); 1 otherwise
    # nn.LSTM's configuration (lstm_impls.create's keywords); the defaults are the chapter's one-layer LSTM
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    batch_first: bool = False
    #: each sequence's length: "full" (all T), or "uniform:F", drawn (seeded) uniformly from ceil(F * T) to T and
    #: fed packed (pack_padded_sequence), the loss over the real tokens only
    lengths: str = FULL_LENGTHS
    amp: str = "none"  # AMPS: autocast's dtype, the parameters in dtype (float32)

    @property
    def config(self) -> dict:
        """The LSTM's configuration keywords, for lstm_impls.create and RNNModel."""
        return {key: getattr(self, key) for key in CONFIG_DEFAULTS}

    @property
    def input_size(self) -> int:
        return self.vocab_size  # one-hot characters

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """autocast's dtype, or None without autocast."""
        return None if self.amp == "none" else DTYPES[self.amp]

    @property
    def packed(self) -> bool:
        return self.lengths != FULL_LENGTHS

    @property
    def padded_tokens(self) -> int:
        """A step's batch with its padding: B * T (a data-parallel rank's)."""
        return self.batch_size * self.seq_len

    def draw_lengths(self, generator: torch.Generator) -> torch.Tensor | None:
        """The batch's sequence lengths (B,), or None for full ones (see `draw_lengths`)."""
        return draw_lengths(self.lengths, self.seq_len, self.batch_size, generator)

    @property
    def id(self) -> str:
        world = f"-W{self.world_size}" if self.world_size != 1 else ""
        config = "".join(mark for mark, on in (
            (f"-L{self.num_layers}", self.num_layers != 1), ("-bi", self.bidirectional),
            (f"-P{self.proj_size}", self.proj_size), (f"-D{self.dropout:g}", self.dropout), ("-bf", self.batch_first),
            (f"-len{self.lengths.removeprefix('uniform:')}", self.packed), (f"-amp-{self.amp}", self.amp != "none"))
            if on)  # the chapter's one-layer LSTM keeps the ids it always had
        return (f"{self.impl}-{self.device}-{self.dtype}-{self.mode}"
                f"-B{self.batch_size}-H{self.hidden_size}-T{self.seq_len}-V{self.vocab_size}{world}{config}")

    def expected_cost_s(self) -> float:
        """A rough guess of the seconds the suite spends on this cell, to balance shards: a fixed
        overhead, the compile for compiled runtimes, and ~60 steps (warm-up, rounds, memory, FLOPs)
        at a nominal throughput. Only the ratios between cells matter."""
        from .instruments.flops import step_flops

        flops = step_flops("forward" if self.mode == "forward" else "train", self.seq_len, self.batch_size,
                           self.vocab_size, self.hidden_size, **self.config)
        rate = NOMINAL_FLOPS_PER_S[torch.device(self.device).type]
        compile_s = COMPILE_COST_S.get(lstm_impls.get(self.impl).runtime, 0.0)
        return 2.0 + compile_s + 60 * flops * self.world_size / rate

    @classmethod
    def from_row(cls, row, impl: str | None = None) -> Cell:
        """The cell a measurements row (a dict or pandas row) records; impl overrides the row's."""
        def get(key: str):  # empty, NaN or NA: a row from before the column: its default
            value, default = row.get(key), KEY_DEFAULTS[key]
            if value is None or str(value) in ("", "nan", "<NA>", "None"):
                return default
            if isinstance(default, bool):
                return str(value).strip().lower() in ("true", "1", "1.0")
            if isinstance(default, str):
                return str(value)
            return type(default)(float(value))

        return cls(impl or row["impl"], row["device"], row["dtype"], row["mode"], int(row["batch_size"]),
                   int(row["hidden_size"]), int(row["seq_len"]), int(row["input_size"]),
                   **{key: get(key) for key in KEY_DEFAULTS})  # by name: KEY_DEFAULTS is not in the fields' order

    def columns(self) -> dict:
        """The cell's own CSV columns."""
        row = asdict(self)
        del row["vocab_size"]
        return row | {"input_size": self.input_size}


# The cost model's constants, measured roughly on this project's 2-core CPU (Inductor compiles a cell
# cold in ~12 s, TorchScript's profiling executor optimizes in ~3 s; ~20 GFLOP/s achieved) and guessed
# for a GPU. They only order and balance shards; a wrong guess makes shards uneven, never wrong.
NOMINAL_FLOPS_PER_S = {"cpu": 20e9, "cuda": 20e12}
COMPILE_COST_S = {"inductor": 12.0, "torchscript": 3.0}


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Part `index` (0-based, like RANK) of `count` disjoint parts whose union is `cells`, balanced by
    expected cost: the costliest cell first, each to the part with the least cost so far (LPT). The
    result keeps the grid's order. Deterministic: it depends only on the cells."""
    totals = [0.0] * min(count, len(cells))  # parts past one per cell stay empty: no list of a huge count
    owner: dict[Cell, int] = {}
    for cell in sorted(cells, key=lambda c: (-c.expected_cost_s(), c.id)):
        part = min(range(len(totals)), key=lambda k: (totals[k], k))
        owner[cell] = part
        totals[part] += cell.expected_cost_s()
    return [c for c in cells if owner[c] == index]


def _part(text: str | None, what: str, example: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n); None -> (0, 1), the whole."""
    if not text:
        return 0, 1
    try:
        index, count = (int(s) for s in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count <= MAX_SIZE:
        raise OptionError(f"{what} {text!r} is not valid; give i/n with 0 <= i < n <= {MAX_SIZE} ({example})")
    return index, count


def parse_shard(text: str | None) -> tuple[int, int]:
    """--shard i/n: part i of n of the grid; None: the whole grid."""
    return _part(text, "--shard", "e.g. 0/2 and 1/2")


def parse_worker(text: str | None) -> tuple[int, int]:
    """--worker k/n: worker k of the n fresh processes of `lstm-bench run`; None: the only one."""
    return _part(text, "--worker", "worker k of n processes")


#: the largest size an option takes: past it no tensor dimension, thread count or shard count makes sense
MAX_SIZE = 2**31 - 1
#: a run id is a name, never a path: it names one directory inside --results-dir
RUN_ID = re.compile(r"[A-Za-z0-9._-]+")


def parse_run_id(text: str | None) -> str | None:
    """A run id: letters, digits, '.', '_', '-' (not '.' or '..'); None stays None (a timestamp is made)."""
    if text is None:
        return None
    if not RUN_ID.fullmatch(text) or text in (".", ".."):
        raise OptionError(f"--run-id {text!r} is not valid; give a name of letters, digits, '.', '_' and '-' "
                          "(not '.' or '..'): it names a directory inside --results-dir")
    return text


def check_path(text: str, what: str) -> str:
    """A path option: not empty, no NUL byte (the OS cannot name it)."""
    if not text or "\0" in text:
        raise OptionError(f"{what} {text!r} is not a path")
    return text


def parse_list(text: str, choices: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma list of choices ('all' means every one); OptionError names the valid ones."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if items == ["all"]:
        return choices
    bad = [s for s in items if s not in choices]
    if bad or not items:
        raise OptionError(f"{what} {text!r} is not valid; choose from {', '.join(choices)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def parse_choice(text: str, choices: tuple[str, ...], what: str) -> str:
    """One of choices; OptionError names the valid ones."""
    if text.strip() not in choices:
        raise OptionError(f"{what} {text!r} is not valid; choose one of {', '.join(choices)}")
    return text.strip()


def parse_sizes(text: str, what: str) -> tuple[int, ...]:
    """A comma list of positive ints; OptionError otherwise."""
    try:
        sizes = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0 or max(sizes) > MAX_SIZE:
        raise OptionError(f"{what} {text!r} is not valid; give positive integers up to {MAX_SIZE}, comma-separated "
                          "(e.g. 16,32)")
    return sizes


def parse_counts(text: str, what: str) -> tuple[int, ...]:
    """A comma list of non-negative ints (0 allowed: "none"); OptionError otherwise."""
    try:
        counts = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 0 or max(counts) > MAX_SIZE:
        raise OptionError(f"{what} {text!r} is not valid; give integers from 0 to {MAX_SIZE}, comma-separated "
                          "(e.g. 0,64)")
    return counts


def parse_bools(text: str, what: str) -> tuple[bool, ...]:
    """A comma list of false / true; OptionError otherwise."""
    words = {"false": False, "true": True}
    items = [s.strip().lower() for s in text.split(",") if s.strip()]
    if not items or any(i not in words for i in items):
        raise OptionError(f"{what} {text!r} is not valid; give false, true or false,true")
    return tuple(dict.fromkeys(words[i] for i in items))


def parse_fractions(text: str, what: str) -> tuple[float, ...]:
    """A comma list of numbers in [0, 1) (dropout probabilities); OptionError otherwise."""
    try:
        values = tuple(dict.fromkeys(float(s) for s in text.split(",") if s.strip()))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < 1 for v in values):
        raise OptionError(f"{what} {text!r} is not valid; give numbers from 0 up to (not including) 1, "
                          "comma-separated (e.g. 0,0.2)")
    return values


def parse_lengths(text: str) -> float:
    """A --lengths value -> the shortest length's fraction of T: "full" is 1, "uniform:F" F (0 < F <= 1)."""
    if text == FULL_LENGTHS:
        return 1.0
    kind, _, fraction = text.partition(":")
    try:
        value = float(fraction)
    except ValueError:
        value = math.nan
    if kind != "uniform" or not 0 < value <= 1:
        raise OptionError(f"--lengths {text!r} is not valid; give full or uniform:F with 0 < F <= 1 (e.g. "
                          "uniform:0.5: each sequence's length drawn from T/2 to T), comma-separated")
    return value


def draw_lengths(spec: str, seq_len: int, batch_size: int, generator: torch.Generator) -> torch.Tensor | None:
    """batch_size sequence lengths of a --lengths value, on the CPU as pack_padded_sequence takes them: uniform
    from ceil(F * seq_len) (at least 1) to seq_len; None for full ones."""
    if spec == FULL_LENGTHS:
        return None
    low = max(1, math.ceil(parse_lengths(spec) * seq_len))
    return torch.randint(low, seq_len + 1, (batch_size,), generator=generator)


def parse_length_specs(text: str) -> tuple[str, ...]:
    """A comma list of --lengths values, each checked and written one way ("uniform:0.50" is "uniform:0.5")."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    fractions = [parse_lengths(item) for item in items or [""]]
    return tuple(dict.fromkeys(FULL_LENGTHS if item == FULL_LENGTHS else f"uniform:{fraction:g}"
                               for item, fraction in zip(items, fractions)))


def parse_impl(name: str, what: str = "--impl") -> str:
    """A registered name or a module:Class string naming an LSTMImpl."""
    try:
        lstm_impls.get(name)
    except ValueError as exc:
        raise OptionError(f"{what}: {exc}") from None
    return name


def parse_impls(text: str) -> tuple[str, ...]:
    """'all', or a comma list of registered names and module:Class strings."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if items == ["all"]:
        return tuple(lstm_impls.names())
    return tuple(dict.fromkeys(parse_impl(name, "--impls") for name in items or [""]))


def parse_device(text: str) -> str:
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'; OptionError when it cannot be used here."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise OptionError(f"--device {text!r} is not valid; choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {text!r}: CUDA is not available here (torch {torch.__version__})")
    return str(device)


@dataclass(frozen=True)
class Options:
    """The suite's options, validated; the same for `pytest bench/` and `lstm-bench run`."""

    impls: tuple[str, ...]
    device: str
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    vocab_size: int
    shard: tuple[int, int] = (0, 1)  # (index, count): this process runs that part of the grid
    threads: int | None = None  # torch's CPU threads; None: torch's own choice (or torchrun's share of the cores)
    # nn.LSTM's configurations: every combination is in the grid (a projection as wide as the hidden size is not
    # an LSTMP and is left out)
    num_layers: tuple[int, ...] = (1,)
    bidirectional: tuple[bool, ...] = (False,)
    proj_sizes: tuple[int, ...] = (0,)
    dropouts: tuple[float, ...] = (0.0,)
    batch_first: tuple[bool, ...] = (False,)
    lengths: tuple[str, ...] = (FULL_LENGTHS,)
    amps: tuple[str, ...] = ("none",)
    malloc: str = MALLOC_POLICIES[0]  # the C allocator's policy while cells are timed (bench/instruments/malloc.py)
    shape: str = "full"  # GRID_SHAPES: every (batch, hidden) combination, or the cross through the centre

    def centre(self) -> tuple[int, int]:
        """The cross's centre: the d2l config's batch and hidden size where the lists hold them, else their middle."""
        def pick(sizes: tuple[int, ...], d2l: int) -> int:
            return d2l if d2l in sizes else sorted(sizes)[(len(sizes) - 1) // 2]

        return pick(self.batch_sizes, D2L["batch_size"]), pick(self.hidden_sizes, D2L["hidden_size"])

    def grid(self) -> list[Cell]:
        """Every combination (of the cross's sizes, with --grid cross), in a stable order, the centre's (batch,
        hidden) first: a process's first cell of an implementation pays what it compiles once a process
        (TorchScript's plan) and reports that first call, at the size the report reads it. The implementations of
        one shape run one after another. Autocast keeps float32 parameters: its cells are the float32 ones."""
        configs = [c for c in itertools.product(self.num_layers, self.bidirectional, self.proj_sizes, self.dropouts,
                                                self.batch_first)]
        centre_b, centre_h = self.centre()
        cells = [Cell(impl, self.device, dtype, mode, b, h, t, self.vocab_size, 1, *config, lengths=lengths, amp=amp)
                for config, lengths, amp, dtype, mode, t, h, b, impl in itertools.product(
                    configs, self.lengths, self.amps, self.dtypes, self.modes, self.seq_lens, self.hidden_sizes,
                    self.batch_sizes, self.impls)
                if config[2] < h and (amp == "none" or dtype == "float32")
                and (self.shape == "full" or b == centre_b or h == centre_h)]
        return sorted(cells, key=lambda c: (c.batch_size, c.hidden_size) != (centre_b, centre_h))

    def cells(self) -> list[Cell]:
        """This process's part of the grid (all of it unless sharded)."""
        return shard(self.grid(), *self.shard)


# Option name -> (default, help). Declared once; the pytest plugin and the CLI both add these.
OPTIONS = {
    "impls": ("all", "implementations: 'all' or a comma list of names / module:Class"),
    "batch-sizes": (None, "comma list; default: the device's grid"),
    "hidden-sizes": (None, "comma list; default: the device's grid"),
    "grid": (None, "cross (batch sizes at one hidden size, hidden sizes at one batch size, through the d2l config or "
             "the lists' middle) or full (every combination); default: cross for the device's sizes, full for sizes "
             "given"),
    "seq-len": (str(D2L["seq_len"]), "sequence length(s), comma list"),
    "vocab-size": (str(D2L["vocab_size"]), "vocabulary size = one-hot input size"),
    "device": ("auto", "auto (cuda when available), cpu, cuda, cuda:N"),
    "dtype": ("float32", f"comma list of {', '.join(DTYPES)}; the model is built in that dtype (native, no autocast)"),
    "mode": ("train", "comma list of train (forward+backward+clip+SGD) and forward (inference)"),
    "results-dir": ("results", "where each run's directory is made"),
    "run-id": (None, "name of this run's directory (default: a timestamp); an existing one is resumed: cells "
               "recorded ok are skipped, the others measured again"),
    "shard": (None, "i/n: run part i (0-based) of n parts of the grid, balanced by expected cost "
              "(under torchrun: RANK/WORLD_SIZE)"),
    "num-layers": ("1", "LSTM layers, comma list (nn.LSTM's num_layers)"),
    "bidirectional": ("false", "comma list of false, true (nn.LSTM's bidirectional; the output layer reads both "
                      "directions)"),
    "proj-size": ("0", "LSTMP projection sizes, comma list; 0: none (nn.LSTM's proj_size; sizes at least the hidden "
                  "size are left out)"),
    "dropout": ("0", "dropout between layers, comma list of numbers in [0, 1) (nn.LSTM's dropout)"),
    "batch-first": ("false", "comma list of false, true (nn.LSTM's batch_first: the model feeds (B, T) inputs)"),
    "lengths": (FULL_LENGTHS, "comma list of full (every sequence T long) and uniform:F (each sequence's length "
                "drawn from F*T to T, the batch packed as pack_padded_sequence packs it; tokens/s counts real tokens)"),
    "amp": ("none", "comma list of none, bfloat16, float16: torch.autocast around the forward and loss, float32 "
            "parameters (a GradScaler with float16); applies to the float32 cells"),
    "threads": (None, "torch's CPU threads (default: 1 on a CPU, torch's own on CUDA); on a shared machine 1 keeps "
                "multi-threaded GEMMs from stalling when another process takes a core"),
    "malloc": (MALLOC_POLICIES[0], "the C allocator while cells are timed: steady (glibc keeps freed memory for reuse: "
               "no mmap, no trim, so a step does not fault its pages in anew and a cell's time does not depend on the "
               "cells before it) or default (glibc's own thresholds, which move with what the process freed)"),
}


def parse_options(get) -> Options:
    """Validate raw option strings; get(name) returns the string or None. OptionError on bad values."""
    device = parse_device(get("device") or "auto")
    device_type = torch.device(device).type
    grid = DEFAULT_GRID[device_type]
    vocab = parse_sizes(get("vocab-size") or OPTIONS["vocab-size"][0], "--vocab-size")
    if len(vocab) != 1:
        raise OptionError(f"--vocab-size {get('vocab-size')!r} is not valid; give one positive integer")
    parse_run_id(get("run-id"))
    check_path(get("results-dir") if get("results-dir") is not None else OPTIONS["results-dir"][0], "--results-dir")
    return Options(
        impls=parse_impls(get("impls") or "all"),
        device=device,
        dtypes=parse_list(get("dtype") or "float32", tuple(DTYPES), "--dtype"),
        modes=parse_list(get("mode") or "train", MODES, "--mode"),
        batch_sizes=parse_sizes(get("batch-sizes"), "--batch-sizes") if get("batch-sizes") else grid["batch_sizes"],
        hidden_sizes=(parse_sizes(get("hidden-sizes"), "--hidden-sizes") if get("hidden-sizes")
                      else grid["hidden_sizes"]),
        seq_lens=parse_sizes(get("seq-len") or OPTIONS["seq-len"][0], "--seq-len"),
        vocab_size=vocab[0],
        shard=parse_shard(get("shard")),
        threads=parse_sizes(get("threads"), "--threads")[0] if get("threads") else DEFAULT_THREADS[device_type],
        num_layers=parse_sizes(get("num-layers") or "1", "--num-layers"),
        bidirectional=parse_bools(get("bidirectional") or "false", "--bidirectional"),
        proj_sizes=parse_counts(get("proj-size") or "0", "--proj-size"),
        dropouts=parse_fractions(get("dropout") or "0", "--dropout"),
        batch_first=parse_bools(get("batch-first") or "false", "--batch-first"),
        lengths=parse_length_specs(get("lengths") or FULL_LENGTHS),
        amps=parse_list(get("amp") or "none", AMPS, "--amp"),
        malloc=parse_choice(get("malloc") or MALLOC_POLICIES[0], MALLOC_POLICIES, "--malloc"),
        shape=parse_choice(get("grid") or ("full" if get("batch-sizes") or get("hidden-sizes") else "cross"),
                           GRID_SHAPES, "--grid"),
    )
