"""The sizes a count uses (Counts: the cell, its parameters, the model's bytes), a moment, and the Prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lstm_impls.base import CONFIG_DEFAULTS

from ..env import CpuDispatch
from ..onednn import Gemm, OneDNNBuffers

OPTIMIZERS = ("sgd", "momentum", "adam")  # as bench.d2l.model.OPTIMIZERS


FUSED_IMPLS = ("fused", "fused_compiled", "triton")  # the fused sequence's implementations
IMPLS = ("compiled", "cudnn", "fused", "fused_compiled", "scratch", "scripted", "triton")


DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


PAGE_BYTES = 4096  # oneDNN aligns each workspace / scratchpad region to a page


MIB = 1 << 20


INDUCTOR_COUNTED_ON = "2.13"  # torch version whose partitioner the compiled count follows


#: Constants measured rather than derived, with the measurement each came from.
FITTED = {
    "onednn_scratchpad_extra": (
        "oneDNN's scratchpad beyond the regions set_offsets books (scratch gates, ht, diff ht): 4664 B in "
        "training and 4952 B in inference, the same at (T, B, H) = (9,12,100), (18,12,100), (9,24,100), "
        "(9,12,200), (9,12,256), (35,16,512) [training] and those plus (35,64,512), (35,128,128), (10,7,64), "
        "(100,96,768) [inference]; oneDNN 3.12, AVX2 CPU, torch 2.13; the same in float32 on AVX512 (Ice Lake, and "
        "AMD EPYC with AVX512-BF16: tests/data/timelines)"),
    "cudnn_reserve": (
        "cuDNN's training reserve: 5 elements per (t, b, h) (20 B in float32), fitted to pytorch issue #2895's "
        "P100 figure (4 layers, H=320): reserve = s*T*B*H*(6L-1); not measured on cuDNN 9"),
    "cudnn_workspace": (
        "cuDNN's RNN workspace: taken as the input projections of all steps, T*B*4H elements; an estimate, "
        "not measured"),
}


@dataclass(frozen=True)
class Sizes:
    """The sizes of one step: batch B, hidden H, sequence T, vocabulary V (= the one-hot input size)."""

    batch_size: int
    hidden_size: int
    seq_len: int
    vocab_size: int


@dataclass
class Prediction:
    """What the model predicts for one cell; parts add up to peak_bytes (library_bytes included)."""

    impl: str
    device: str
    dtype: str
    mode: str
    optimizer: str
    batch_size: int
    hidden_size: int
    seq_len: int
    vocab_size: int
    kernel: str  # what runs the LSTM: autograd ops, TorchScript, Inductor, oneDNN, ATen native, cuDNN
    path: str  # the path the count follows on this device, and why (the CPU's dispatch)
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    workspace_bytes: int
    library_bytes: int
    peak_bytes: int
    peak_at: str  # when in the step the peak happens
    peak_live: dict[str, int] = field(default_factory=dict)  # what is alive then, bytes by name
    fitted: tuple[str, ...] = ()  # FITTED keys this prediction used
    notes: tuple[str, ...] = ()

    @property
    def model_bytes(self) -> int:
        """What the model takes whatever the batch: parameters, gradients, optimizer state."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def batch_bytes(self) -> int:
        """What the batch takes at the peak: activations and workspace."""
        return self.activation_bytes + self.workspace_bytes

    def as_dict(self) -> dict:
        return asdict(self) | {"model_bytes": self.model_bytes, "batch_bytes": self.batch_bytes}


# A tensor kind alive at a moment: (count, bytes each). CUDA rounds each to the allocator's 512 B.
Term = tuple[int, int]


@dataclass
class Moment:
    name: str
    live: dict[str, Term]


def page(nbytes: int) -> int:
    return -(-nbytes // PAGE_BYTES) * PAGE_BYTES


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def good_ld(dim: int, elem_bytes: int) -> int:
    """oneDNN's get_good_ld: a leading dimension rounded up to 64 bytes, plus 64 bytes when a multiple of 256."""
    ld = round_up(dim, 64 // elem_bytes)
    return ld + 64 // elem_bytes if ld % 256 == 0 else ld


class Counts:
    """The sizes every kernel's count uses."""

    def __init__(self, impl: str, sizes: Sizes, dtype: str, mode: str, optimizer: str, *, cuda: bool = False,
                 flat_lstm: bool = False, cpu: CpuDispatch | None = None, onednn: OneDNNBuffers | None = None,
                 config: dict | None = None):
        self.impl, self.dtype, self.mode, self.optimizer, self.cuda = impl, dtype, mode, optimizer, cuda
        self.cpu, self.onednn = cpu, onednn
        self.gemms: list[Gemm] = []  # every matmul gemm_scratch was asked about, as the step calls it
        self.B, self.H, self.T, self.V = sizes.batch_size, sizes.hidden_size, sizes.seq_len, sizes.vocab_size
        self.I = self.V
        self.s = DTYPE_BYTES[dtype]
        self.u = self.B * self.H * self.s
        B, H, T, V, s = self.B, self.H, self.T, self.V, self.s
        self.train = mode == "train"
        # nn.LSTM's configuration: L layers of D directions, each h of H_out (the projection's P, else H)
        self.config = CONFIG_DEFAULTS | (config or {})
        self.L, self.D = int(self.config["num_layers"]), 2 if self.config["bidirectional"] else 1
        self.proj = int(self.config["proj_size"])
        self.H_out = self.proj or H
        self.uo = B * self.H_out * s  # one (B, H_out) tensor: a step's h
        self.Y_width = self.D * self.H_out  # the LSTM's output (T, B, D * H_out), the output layer's input
        self.TBY = T * B * self.Y_width * s
        self.stacked = self.L * self.D > 1  # nn.LSTM's 3-D state (L * D, B, size)
        self.lstm_params: list[int] = []
        for layer, _ in self.layers_and_directions():
            n_in = self.layer_input_size(layer)
            if impl == "cudnn":  # nn.LSTM: weight_ih (4H, I), weight_hh (4H, H_out), bias_ih, bias_hh (4H,), weight_hr
                self.lstm_params += [4 * H * n_in * s, 4 * H * self.H_out * s, 4 * H * s, 4 * H * s]
            elif impl in FUSED_IMPLS:  # fused: W_x (I, 4H), W_h (H, 4H), b (4H,)
                self.lstm_params += [n_in * 4 * H * s, self.H_out * 4 * H * s, 4 * H * s]
            else:  # d2l: W_x* (I, H), W_h* (H_out, H), b_* (H,) for 4 gates, then W_hr (H, P)
                self.lstm_params += [n_in * H * s, self.H_out * H * s, H * s] * 4
            if self.proj:
                self.lstm_params.append(H * self.proj * s)
        self.linear_params = [V * self.Y_width * s, V * s]
        self.params = self.lstm_params + self.linear_params
        self.P_lstm, self.P_lin = sum(self.lstm_params), sum(self.linear_params)

        def block(nbytes: int) -> int:  # the CUDA caching allocator hands out multiples of 512 B
            return round_up(nbytes, 512) if cuda else nbytes

        lstm = [block(self.P_lstm)] if flat_lstm else [block(p) for p in self.lstm_params]  # cuDNN: one flat buffer
        self.P = sum(lstm) + sum(block(p) for p in self.linear_params)
        self.G = self.P if self.train else 0
        self.O = 0
        if self.train and optimizer == "momentum":
            self.O = self.P  # one momentum buffer per parameter
        elif self.train and optimizer == "adam":  # exp_avg, exp_avg_sq, and a float32 0-d step per parameter
            self.O = 2 * self.P + len(self.params) * block(4)
        self.TBH, self.TBV, self.TB = T * B * H * s, T * B * V * s, T * B

    def layers_and_directions(self) -> list[tuple[int, int]]:
        """(layer, direction) in the order they run, as LSTMImpl.layers_and_directions."""
        return [(layer, d) for layer in range(self.L) for d in range(self.D)]

    def layer_input_size(self, layer: int) -> int:
        return self.I if layer == 0 else self.Y_width

    def layer_params(self, layer: int, direction: int) -> int:
        """Bytes of one layer's and direction's parameters (what its backward's gradients take)."""
        each = len(self.lstm_params) // (self.L * self.D)
        k = layer * self.D + direction
        return sum(self.lstm_params[k * each:(k + 1) * each])

    def gemm_scratch(self, gemm: Gemm) -> int:
        """Bytes oneDNN's scratchpad takes inside one (M, K) x (K, N) matmul of this cell's dtype, called as
        `gemm` describes (op and operand layouts: with bfloat16 instructions they decide the buffers), while
        its (M, N) result exists; every GEMM asked about is kept in `self.gemms`, to hold to the step's own.
        ATen hands a bfloat16 matmul to oneDNN where oneDNN runs bfloat16 and
        M*K*N > 16**3 (mkldnn/Matmul.cpp, checksize); float32 goes to MKL, which allocates through torch
        nothing. Without bfloat16 instructions oneDNN accumulates the whole result in float32 (measured:
        M*N*4 rounded up to 512 B, plus 128 B, 16 shapes, 2 threads); with them, brgemm's blocked buffers,
        read off oneDNN (bench/instruments/onednn.py)."""
        self.gemms.append(gemm)
        M, K, N = gemm.M, gemm.K, gemm.N
        if self.cuda or self.dtype != "bfloat16" or not (self.cpu and self.cpu.onednn_bf16) or M * K * N <= 16**3:
            return 0
        if self.cpu.native_bf16:  # brgemm's blocked buffers: read off oneDNN (bench/instruments/onednn.py)
            return self.onednn.gemm_bytes(gemm) if self.onednn else 0
        if gemm.b_t and 1 in (M, N):  # one row or column with a transposed (K, N): ATen's gemv, no oneDNN (measured)
            return 0
        return round_up(M * N * 4, 512) + 128

    # the pieces every moment has
    def model(self) -> dict[str, Term]:
        live = {"parameters": (1, self.P)}
        if self.G:
            live["gradients"] = (1, self.G)
        if self.O:
            live["optimizer state"] = (1, self.O)
        return live

    def state(self) -> dict[str, Term]:
        """A state h, c: (B, H) each, or nn.LSTM's (L * D, B, H_out) and (L * D, B, H)."""
        k = self.L * self.D
        if self.uo == self.u:
            return {"h, c": (2, k * self.u)}
        return {"h": (1, k * self.uo), "c": (1, k * self.u)}

    def batch_and_state(self) -> dict[str, Term]:
        return {"batch X, Y (int64)": (2, 8 * self.TB)} | {f"carried state {k}": v for k, v in self.state().items()}

def total(live: dict[str, Term], cuda: bool) -> int:
    return sum(n * (round_up(each, 512) if cuda and each else each) for n, each in live.values())


class NotModelled(ValueError):
    """An implementation whose tensors the model does not count (yet)."""

