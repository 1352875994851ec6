"""The memory model: every part of a step's memory, per implementation, counted from the tensors.

For a cell (implementation, device, dtype, mode, optimizer, sizes B, H, T, V) it predicts what the
suite measures (bench/instruments/measure.py): param_bytes, grad_bytes, optimizer_bytes,
activation_bytes (storages autograd saves, parameters excluded), workspace_bytes (the rest of the
peak), library_bytes (CUDA: cuBLAS/cuBLASLt workspaces kept across steps) and peak_bytes.

How: a step is a sequence of moments (end of forward, a point in backward, the optimizer step,
...). For each moment the model lists the tensors alive then, as (count, bytes each), from what the
code allocates and what autograd keeps; the peak is the largest moment. Nothing is fitted to the
totals. The few constants that are measured rather than derived are in FITTED, each with the
measurement it came from, and a prediction that uses one lists it in `fitted`.

Symbols: s = bytes per element of the dtype; u = B*H*s (one (B, H) tensor); I = V (one-hot input).
The counts below were derived from the code (lstm_impls/cell.py, torch's autograd formulas,
aten/src/ATen/native/RNN.cpp and mkldnn/RNN.cpp, oneDNN's rnn_utils) and checked event by event
against the profiler's allocation timeline of one step (torch 2.13, oneDNN 3.12), on three kinds of
CPU (tests/data/timelines).

The path depends on what the CPU dispatches (env.CpuDispatch, this machine's unless a recorded CPU's
is given): where oneDNN runs bfloat16 (AVX512 and newer), nn.LSTM's bfloat16 goes to oneDNN and every
bfloat16 matmul with M*K*N > 16**3 to oneDNN's GEMM, which holds a scratchpad while it runs
(_Counts.gemm_scratch); elsewhere to ATen's native kernels and MKL. oneDNN's own bfloat16 buffers
(reordered weights, brgemm's blocked buffers, the RNN scratchpad) follow unpublished per-ISA
heuristics: they are read off oneDNN (bench/instruments/onednn.py), everything else is counted.

What each kernel saves for backward (activation_bytes), per step t of T:
- autograd ops (scratch, and nn.LSTM on ATen's native CPU kernels): 7 (B, H) tensors: the previous
  h and c (for t = 0 the carried state), the gates I, F, O, C~ and tanh(C) (native: the (B, 4H)
  gates buffer, the previous h and c, tanh(c)); plus the one-hot input (T, B, V), the stacked
  outputs (T, B, H), log-softmax (T*B, V), the int64 target and a scalar total weight.
- TorchScript (scripted): the same tensors (autodiff's differentiable graphs capture them).
- Inductor (compiled, cell scope): what the min-cut partitioner saves per call; see _inductor.
- oneDNN (nn.LSTM, float32 on a CPU): the training workspace (_onednn_workspace_bytes), the input,
  the carried state, the outputs and the final h, c.
- cuDNN: the reserve space (fitted, see FITTED), input, state, outputs.
- the fused sequence (lstm_impls/fused_cell.py): the input, h0 and the outputs; fused and
  fused_compiled then backward's factors (T, B, 4H) and F, KC (T, B, H): 7 (B, H) values per step;
  triton the activated gates and every c, and c0: 6 per step.

Where the peak happens (Prediction.peak_at, with what is alive then in Prediction.peak_live):
- training, end of forward: every saved tensor, the logits and last step's gradients (zero_grad runs
  after forward) - small H and small B*T*V (scratch, compiled);
- the loss's and the output layer's backward: log-softmax, two (T*B, V) gradients, then dY (T, B, H)
  beside dlogits - when B*T is large against H*H (e.g. H 64-128 with B 64-96);
- the LSTM's backward at step T-2, when H*H dominates: all new gradients exist and the step's weight
  gradient waits to be added - one (H, H) term (scratch), the step's 12 weight gradients (compiled),
  the 8 steps of an unrolled body (scripted), W_hh's out-of-place sum (ATen native);
- ATen native, forward at torch.stack: the input projection (T, B, 4H) and every step's gates;
- oneDNN, inside mkldnn_rnn_layer_backward: workspace, scratchpad, weights reordered both ways,
  float32 diff buffers;
- the fused sequence: a forward step, with the input projection and the gates' buffer, both
  (T, B, 4H); or backward's first step, with the gates' gradients (T, B, 4H) beside the gates; or
  W_h's gradient (two (H, 4H) at once) when H*H dominates; fused_compiled: Inductor's graph for
  backward's factors, which copies the buffer it mutates;
- Adam on a CPU with small batches: the optimizer step (sqrt and quotient of the largest parameter);
- inference: torch.stack of the outputs (the list and the stacked copy), or inside mkldnn_rnn_layer.

With layers, directions, a projection or dropout (nn.LSTM's keywords, Cell.config) the count follows the
program allocation by allocation (_Step): LSTMImpl.forward_stacked around each implementation's one-layer
sequence, each layer and direction counted as one layer is (STACKED_COUNTERS), the peak the fullest moment.
Under torch.autocast (Cell.amp) the counts are bench/instruments/memory_autocast.py's.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch

from lstm_impls.base import CONFIG_DEFAULTS

from ..grid import DTYPES, MODES, Cell
from .env import CpuDispatch, cpu_dispatch
from .onednn import Gemm, OneDNNBuffers, Probe

OPTIMIZERS = ("sgd", "momentum", "adam")  # as bench.d2l.model.OPTIMIZERS
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
class _Moment:
    name: str
    live: dict[str, Term]


def _page(nbytes: int) -> int:
    return -(-nbytes // PAGE_BYTES) * PAGE_BYTES


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def good_ld(dim: int, elem_bytes: int) -> int:
    """oneDNN's get_good_ld: a leading dimension rounded up to 64 bytes, plus 64 bytes when a multiple of 256."""
    ld = _round_up(dim, 64 // elem_bytes)
    return ld + 64 // elem_bytes if ld % 256 == 0 else ld


class _Counts:
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
            elif impl in FUSED_STEP_TEMPORARIES:  # fused: W_x (I, 4H), W_h (H, 4H), b (4H,)
                self.lstm_params += [n_in * 4 * H * s, self.H_out * 4 * H * s, 4 * H * s]
            else:  # d2l: W_x* (I, H), W_h* (H_out, H), b_* (H,) for 4 gates, then W_hr (H, P)
                self.lstm_params += [n_in * H * s, self.H_out * H * s, H * s] * 4
            if self.proj:
                self.lstm_params.append(H * self.proj * s)
        self.linear_params = [V * self.Y_width * s, V * s]
        self.params = self.lstm_params + self.linear_params
        self.P_lstm, self.P_lin = sum(self.lstm_params), sum(self.linear_params)

        def block(nbytes: int) -> int:  # the CUDA caching allocator hands out multiples of 512 B
            return _round_up(nbytes, 512) if cuda else nbytes

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
        return _round_up(M * N * 4, 512) + 128

    def output_gemms(self, moments: list[_Moment]) -> list[_Moment]:
        """The output layer's GEMMs, each a moment of its own: in inference the logits beside the LSTM's input
        and outputs; in training, where they have a scratchpad (bfloat16 on oneDNN), forward's logits =
        Y W^T + b just before log-softmax, backward's dY = dlogits W and dW = dlogits^T Y, derived from the
        moments a kernel counted, which are alive then."""
        TB, H, V = self.TB, self.Y_width, self.V  # H: the output layer's input width
        scratch = self.gemm_scratch(Gemm.addmm(TB, H, V, "row", b_t=True))  # forward's logits: addmm(b, Y, W.T)
        dy_scratch = dw_scratch = 0
        if self.train:  # backward's: dY = dlogits W, dW = dlogits^T Y
            dy_scratch, dw_scratch = self.gemm_scratch(Gemm(TB, V, H)), self.gemm_scratch(Gemm(V, TB, H, a_t=True))
        extra = []
        if not self.train:  # inference: the LSTM's input and outputs are still alive beside the logits
            extra.append(_Moment("the output layer's GEMM (logits beside the LSTM's input and outputs)", self.model()
                                 | self.batch_and_state() | {
                "one-hot input": (1, self.TBV), "outputs (T, B, H)": (1, self.TBY)} | {
                f"new state {k}": v for k, v in self.state().items()} | {
                "logits": (1, self.TBV), "oneDNN GEMM scratchpad": (1, scratch)}))
        for m in moments:
            gone = ("log-softmax", "target (int64)", "total weight", "loss")
            if m.name.startswith("end of forward") and scratch:
                live = {k: v for k, v in m.live.items() if k not in gone}
                extra.append(_Moment("the output layer's GEMM (its oneDNN scratchpad)", live | {
                    "oneDNN GEMM scratchpad": (1, scratch)}))
            elif m.name == "backward of the output layer (dY computed)":
                live = {k: v for k, v in m.live.items() if k != "output layer's gradients"}
                if dy_scratch:
                    extra.append(_Moment("backward of the output layer, dY's GEMM (its oneDNN scratchpad)", live | {
                        "oneDNN GEMM scratchpad": (1, dy_scratch)}))
                if dw_scratch:
                    extra.append(_Moment("backward of the output layer, dW's GEMM (its oneDNN scratchpad)", live | {
                        "output layer's weight gradient": (1, V * H * self.s),
                        "oneDNN GEMM scratchpad": (1, dw_scratch)}))
        return moments + extra

    # pieces every moment has
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

    def ops_activations(self) -> dict[str, Term]:
        """What autograd saves for the chapter's cell run op by op (and for ATen's native LSTM)."""
        return {"one-hot input": (1, self.TBV), "carried state h, c": (2, self.u),
                "per-step saved h, c, gates, tanh(c)": (7 * self.T - 2, self.u),
                "stacked outputs": (1, self.TBH), "log-softmax": (1, self.TBV), "target (int64)": (1, 8 * self.TB),
                "total weight": (1, self.s)}

    def optimizer_step(self) -> _Moment:
        """After backward: model, batch, both states, logits, loss; Adam's foreach sqrt(exp_avg_sq) list."""
        live = self.model() | self.batch_and_state() | {f"new state {k}": v for k, v in self.state().items()} | {
            "logits": (1, self.TBV), "loss, clip_grad_norm_'s total norm": (2, self.s)}
        if self.optimizer == "adam" and self.cuda:  # foreach (the default on CUDA): a sqrt list of every parameter
            live["Adam's sqrt(exp_avg_sq) list (foreach)"] = (1, self.P)
        elif self.optimizer == "adam":
            # single-tensor Adam (foreach is not the default on a CPU): for each parameter in order,
            # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps) holds sqrt and the quotient at
            # once, while the previous parameter's denom is still bound; and an 8-byte scalar
            sizes = self.params
            temps = max(2 * p + (sizes[i - 1] if i else 0) for i, p in enumerate(sizes))
            live["Adam's denom: sqrt, quotient, the previous denom"] = (1, temps)
            live["Adam's scalar"] = (1, 8)
        return _Moment("optimizer step", live)

    def loss_backward(self, acts: dict[str, Term], new_state: dict[str, Term]) -> list[_Moment]:
        """Backward's first nodes, before the LSTM's: zero_grad has freed the gradients.

        First log-softmax's backward: log-softmax, the logits and two (T*B, V) gradients (nll_loss's and
        log_softmax's) alive with every saved tensor; then the output layer's (addmm) backward: dY
        (T, B, H) and the layer's gradients beside dlogits, the stacked outputs still saved. These are
        the peak when B*T is large against H*H (the LSTM's backward then frees more than it adds)."""
        saved = {k: v for k, v in acts.items() if k not in ("target (int64)", "total weight")}
        base = ({k: v for k, v in self.model().items() if k != "gradients"} | self.batch_and_state() | new_state
                | {"logits": (1, self.TBV), "loss and its gradient": (2, self.s)})
        del_logsm = {k: v for k, v in saved.items() if k != "log-softmax"}
        return [
            _Moment("backward of the loss (log-softmax's gradient computed)", base | saved | {
                "gradients of log-softmax and of the logits": (2, self.TBV)}),
            _Moment("backward of the output layer (dY computed)", base | del_logsm | {
                "gradient of the logits": (1, self.TBV), "dY (T, B, H)": (1, self.TBY),
                "output layer's gradients": (1, self.P_lin)}),
        ]

    def forward_moments(self, saved: dict[str, Term], at: str = "torch.stack of the outputs, end of the LSTM"
                        ) -> list[_Moment]:
        """Inference moments shared by the op-by-op kernels: the one-hot cast, the LSTM's fullest moment
        (`at`, with `saved` alive), the loss."""
        base = self.model() | self.batch_and_state()
        return [
            _Moment("one-hot cast (int64 and float copies)", base | {"one-hot int64": (1, 8 * self.TB * self.V),
                                                                    "one-hot input": (1, self.TBV)}),
            _Moment(at, base | saved),
            _Moment("loss", base | {"new state h, c": (2, self.u), "logits": (1, self.TBV),
                                    "log-softmax": (1, self.TBV), "target (int64)": (1, 8 * self.TB)}),
        ]


def _total(live: dict[str, Term], cuda: bool) -> int:
    return sum(n * (_round_up(each, 512) if cuda and each else each) for n, each in live.values())


# ---------------------------------------------------------------- the kernels


def _autograd_ops(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """scratch: the chapter's cell op by op in eager autograd."""
    if not c.train:
        return {}, c.forward_moments({"one-hot input": (1, c.TBV), "outputs list h_1..h_T": (c.T, c.u),
                                      "last c": (1, c.u), "stacked outputs": (1, c.TBH)})
    acts = c.ops_activations()
    end_of_forward = _Moment("end of forward (loss computed, before zero_grad)", c.model() | c.batch_and_state()
                             | acts | {"new state h, c": (2, c.u), "logits": (1, c.TBV), "loss": (1, c.s)})
    # Backward, second-to-last time step, first gate's matmul backward: all new gradients exist
    # (the last step allocated them), step T-1's saved tensors, the stack, log-softmax and the
    # target are freed; dY (T, B, H) is alive, and the (H, H) weight-gradient term of this step
    # waits to be added into W_h's buffer, with 4 (B, H) gradients of the step in flight.
    saved_left = dict(acts)
    for key in ("stacked outputs", "log-softmax", "target (int64)", "total weight"):
        del saved_left[key]
    saved_left["per-step saved h, c, gates, tanh(c)"] = (7 * c.T - 2 - 7, c.u)
    backward = _Moment("backward, step T-2: W_h gradient term before it is added", c.model() | c.batch_and_state()
                       | saved_left | {
        "new state h, c": (2, c.u), "logits": (1, c.TBV), "loss and its gradient": (2, c.s),
        "dY (T, B, H)": (1, c.TBH), "(B, H) gradients in flight": (4, c.u),
        "W_h gradient term (H, H)": (1, c.H * c.H * c.s), "its GEMM's oneDNN scratchpad": (1, c.gemm_scratch(
            Gemm(c.H, c.B, c.H, a_t=True)))})
    return acts, [end_of_forward, *c.loss_backward(acts, {"new state h, c": (2, c.u)}), backward,
                  c.optimizer_step()]


class _Step:
    """A step's tensors as the code allocates and frees them, in order, with a snapshot at each moment that
    can be the peak: for counts that follow a program (layers, directions) rather than a fixed list."""

    def __init__(self, live: dict[str, Term]):
        self.live = {k: v for k, v in live.items() if v[0] * v[1]}
        self.moments: list[_Moment] = []

    def alloc(self, name: str, count: int, each: int) -> None:
        if count * each:
            had, _ = self.live.get(name, (0, each))
            self.live[name] = (had + count, each)

    def free(self, name: str, count: int | None = None) -> None:
        if name in self.live:
            had, each = self.live[name]
            left = 0 if count is None else had - count
            if left > 0:
                self.live[name] = (left, each)
            else:
                del self.live[name]

    def moment(self, name: str, transient: dict[str, Term] | None = None) -> None:
        self.moments.append(_Moment(name, self.live | {k: v for k, v in (transient or {}).items() if v[0] * v[1]}))


#: the stacked counts' name for the gradient a layer's output receives (the top layer's: the output layer's dY)
GRAD_OUT = "dY (T, B, D H_out): the layer's output's gradient"


def _step_start(c: _Counts) -> _Step:
    """A step's tensors up to the one-hot input: the model, the batch, the carried state, the one-hot cast."""
    sim = _Step(c.model() | c.batch_and_state())
    sim.alloc("one-hot int64", 1, 8 * c.TB * c.V)
    sim.alloc("one-hot input", 1, c.TBV)
    sim.moment("one-hot cast (int64 and float copies)")
    sim.free("one-hot int64")
    return sim


def _loss_and_output_layer(sim: _Step, c: _Counts, not_saved: set[str]) -> dict[str, Term]:
    """From the LSTM's outputs to its output's gradient (GRAD_OUT): the output layer and the loss (the end of
    forward), zero_grad, the loss's backward and the output layer's. Returns what autograd saved: what is
    alive at the end of forward but the model, the batch, the logits, the loss and `not_saved`."""
    for k, each in (("logits", c.TBV), ("log-softmax", c.TBV), ("target (int64)", 8 * c.TB),
                    ("total weight", c.s), ("loss", c.s)):
        sim.alloc(k, 1, each)
    sim.moment("end of forward (loss computed, before zero_grad)")
    not_saved = not_saved | set(c.model()) | {"batch X, Y (int64)", "logits", "loss"}
    acts = {k: v for k, v in sim.live.items() if k not in not_saved}
    sim.free("gradients")
    sim.alloc("loss's gradient", 1, c.s)
    sim.free("target (int64)")  # nll_loss's backward is done with them
    sim.free("total weight")
    sim.alloc("gradients of log-softmax and of the logits", 2, c.TBV)
    sim.moment("backward of the loss (log-softmax's gradient computed)")
    sim.free("log-softmax")
    sim.free("gradients of log-softmax and of the logits", 1)
    sim.alloc(GRAD_OUT, 1, c.TBY)
    sim.alloc("output layer's gradients", 1, c.P_lin)
    sim.moment("backward of the output layer (dY computed)")
    sim.free("gradients of log-softmax and of the logits")
    return acts


def _layer_name(layer: int, d: int, what: str) -> str:
    """A stacked count's name for one layer's and direction's tensor."""
    return f"layer {layer}{' reverse' if d else ''}: {what}"


def _dropout_backward(sim: _Step, c: _Counts, layer: int, grad_in: str, noise_of: dict[int, str]) -> str:
    """Dropout's backward on the gradient of `layer`'s input (the gradient times the noise, which goes); returns
    the name of the gradient the layer below receives: grad_in itself where no dropout came before the layer."""
    if layer not in noise_of:
        return grad_in
    grad = _layer_name(layer - 1, 0, "dropout's backward (T, B, D H_out)")
    sim.alloc(grad, 1, c.T * c.B * c.Y_width * c.s)
    sim.moment(f"layer {layer - 1}: dropout's backward")
    sim.free(grad_in)
    sim.free(noise_of[layer])
    return grad


def _dropout(sim: _Step, c: _Counts, layer: int, out: str, noise_of: dict[int, str], hold: list[str] | None) -> str:
    """F.dropout on a layer's output `out` (training mode: the suite never calls eval), input * noise: the noise
    is kept for backward (noise_of[layer + 1]) unless no grad; a concatenation goes at once, a one-direction
    output when `hold` is let go (None: it stays, saved). Returns the dropped output's name."""
    size = c.T * c.B * c.Y_width * c.s
    noise, dropped = _layer_name(layer, 0, "dropout noise"), _layer_name(layer, 0, "outputs after dropout")
    sim.alloc(noise, 1, size)
    sim.alloc(dropped, 1, size)
    sim.moment(f"layer {layer}: dropout")
    noise_of[layer + 1] = noise
    if not c.train:
        sim.free(noise)
    if c.D == 2:
        sim.free(out)
    elif hold is not None:
        hold.append(out)
    return dropped


def _stacked_torchscript(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """scripted with layers, directions or a projection: forward_stacked (Python) around the scripted loop,
    which keeps what the eager loop keeps; in backward each layer's and direction's last unrolled 8-step body
    holds 8 steps' weight-gradient terms until it sums them (_torchscript)."""
    return _stacked_ops(c, unrolled=True)


def _stacked_inductor(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """compiled (cell scope) with layers, directions or a projection: forward_stacked around the chapter's loop
    of compiled cells; each call saves what the partitioner saves (_inductor: h, c and the four gates; tanh(c)
    is recomputed; with proj_size the projected h too) and its backward returns the step's weight gradients
    at once."""
    return _stacked_ops(c, inductor=True)


def _stacked_ops(c: _Counts, unrolled: bool = False, inductor: bool = False) -> tuple[dict[str, Term], list[_Moment]]:
    """scratch with layers, directions or a projection: LSTMImpl.forward_stacked around the chapter's loop, op
    by op in eager autograd, followed allocation by allocation (_Step).

    Per layer, direction and time step the chapter's cell keeps 7 (B, H) tensors for backward (I, F, O, C~,
    c, tanh(c) and h = O * tanh(c)); with a projection h = (O * tanh(c)) W_hr is one (B, P) more. The reverse
    direction reads a flipped copy of its layer's input and flips its outputs back; a bidirectional layer
    concatenates both; dropout between layers keeps its (T, B, D * H_out) noise (input * noise). Backward
    runs the layers top down and the reverse direction first (its nodes are the newer); a direction holds its
    gradients from its last step on, and its input's per-step gradients until unbind's backward stacks them.
    """
    T, B, H, s, u, uo, Hout, L, D = c.T, c.B, c.H, c.s, c.u, c.uo, c.H_out, c.L, c.D
    p_drop = float(c.config["dropout"])

    def tb(width: int) -> int:  # one (T, B, width) tensor
        return T * B * width * s

    name = _layer_name

    def saved(layer: int, d: int) -> list[tuple[str, int, int]]:  # a direction's per-step saved tensors
        return [(name(layer, d, "per-step h, c, gates, tanh(c) (B, H)"), (6 if inductor else 7) * T, u),
                (name(layer, d, "per-step projected h (B, P)"), T if c.proj else 0, uo)]

    sim = _step_start(c)
    layer_input = "one-hot input"
    inputs_of, noise_of = [], {}  # each layer's input, and the dropout noise on it
    at_next_layer: list[str] = []  # held by a Python name (`inputs`, `outputs`) that the next layer rebinds
    at_next_run: list[str] = []  # held by `Y`, rebound when the next run returns
    for layer in range(L):
        width = c.layer_input_size(layer)
        inputs_of.append(layer_input)
        for gone in at_next_layer:
            sim.free(gone)
        at_next_layer, outputs = [], []
        for d in range(D):
            if d:
                sim.alloc(name(layer, d, "flipped input (T, B, I)"), 1, tb(width))
                if not c.train:
                    at_next_layer.append(name(layer, d, "flipped input (T, B, I)"))
            last_step = f"layer {layer}{' reverse' if d else ''}: the last step"
            gemm = {"its GEMM's oneDNN scratchpad": (1, c.gemm_scratch(Gemm(B, width, H)))}
            if c.train:  # the last step's fullest: 3 gates and a gate's two GEMM results, then all 7 saved
                for what, count, each in saved(layer, d):
                    sim.alloc(what, count - count // T, each)
                sim.moment(last_step + "'s GEMM", {"a step's gates and GEMM results (B, H)": (5, u)} | gemm)
                for what, count, each in saved(layer, d):
                    sim.alloc(what, count // T, each)
            else:  # no grad: the outputs list and the last c; in the step its gates, c, tanh(c), products
                sim.alloc(name(layer, d, "outputs list h_1..h_T"), T - 1, uo)
                sim.alloc(name(layer, d, "last c"), 1, u)
                sim.moment(last_step + "'s GEMM", {"a step's gates and GEMM results (B, H)": (5, u)} | gemm)
                sim.moment(last_step + ": its new c and h", {"a step's gates, c, tanh(c), h (B, H)": (7, u),
                                                             "its projected h (B, P)": (1 if c.proj else 0, uo)})
                sim.alloc(name(layer, d, "outputs list h_1..h_T"), 1, uo)
            stacked = name(layer, d, "stacked outputs (T, B, H_out)")
            sim.alloc(stacked, 1, tb(Hout))
            sim.moment(f"layer {layer}{' reverse' if d else ''}: torch.stack of the outputs")
            for gone in at_next_run:
                sim.free(gone)
            at_next_run = []
            if not c.train:  # the list is gone; h_T stays in forward_stacked's Hs
                sim.free(name(layer, d, "outputs list h_1..h_T"), T - 1)
            if d:
                flipped = name(layer, d, "outputs flipped back (T, B, H_out)")
                sim.alloc(flipped, 1, tb(Hout))
                at_next_run.append(stacked)
                outputs.append(flipped)
            else:
                outputs.append(stacked)
        out = outputs[0]
        if D == 2:
            out = name(layer, 0, "both directions' outputs (T, B, 2 H_out)")
            sim.alloc(out, 1, tb(2 * Hout))
            sim.moment(f"layer {layer}: the directions' outputs concatenated")
            at_next_layer += outputs
        if not c.train and layer_input != "one-hot input":
            at_next_layer.append(layer_input)  # nothing saves it: gone once `inputs` is rebound
        if p_drop and layer < L - 1:  # `Y` holds a one-direction output until the next layer's run returns
            out = _dropout(sim, c, layer, out, noise_of, at_next_run)
        layer_input = out
    state = {f"new state {k}": v for k, v in c.state().items()}
    if c.stacked:
        for k, v in state.items():
            sim.alloc(k, *v)
        sim.moment("forward_stacked's returned state stacked")
    # forward_stacked returns: its lists go, and with them each direction's h_T and c_T (the state's
    # own tensors where nothing is stacked); the last layer's outputs but the returned ones go
    for gone in at_next_layer + at_next_run:
        sim.free(gone)
    for layer, d in c.layers_and_directions():
        if c.train:
            sim.free(name(layer, d, "per-step h, c, gates, tanh(c) (B, H)"), 1 if c.proj or inductor else 2)
            sim.free(name(layer, d, "per-step projected h (B, P)"), 1)
        else:
            sim.free(name(layer, d, "outputs list h_1..h_T"))
            sim.free(name(layer, d, "last c"))
    if not c.stacked:
        for k, v in state.items():
            sim.alloc(k, *v)
    if not c.train:  # the model has returned: its one-hot input and the LSTM's outputs are gone
        sim.free(layer_input)
        sim.free("one-hot input")
        moments = c.forward_moments({}, at="the LSTM's outputs")  # the one-hot cast and the loss, as ever
        sim.alloc("logits", 1, c.TBV)
        sim.alloc("log-softmax", 1, c.TBV)
        sim.alloc("target (int64)", 1, 8 * c.TB)
        sim.moment("loss")
        return {}, sim.moments + moments[:1]
    top = layer_input  # saved by the output layer
    acts = _loss_and_output_layer(sim, c, set(state))
    grad_out = GRAD_OUT
    sim.free(top)
    for layer in reversed(range(L)):
        width = c.layer_input_size(layer)
        grad_in = name(layer, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            if d:
                sim.alloc(name(layer, d, "dY flipped (T, B, H_out)"), 1, tb(Hout))
            sim.alloc(name(layer, d, "weight gradients"), 1, c.layer_params(layer, d))
            per_step = saved(layer, d)
            for what, count, _ in per_step:  # step T-1's backward is done: its 7 (+1) are freed
                sim.free(what, count // T)
            if inductor:  # and 3 more at the next step's backward, its gradients in flight included (measured:
                sim.free(per_step[0][0], 3)  # 6T - 10 (B, H) then, as _inductor's 6T - 8 with the new state)
            pieces = name(layer, d, "its input's per-step gradients (B, I)")
            if layer:
                sim.alloc(pieces, 1, B * width * s)
            sim.moment(f"layer {layer}{' reverse' if d else ''} backward, step T-2: a weight gradient term", {
                "(B, H) gradients in flight": (0 if inductor else 4, u),
                "(B, I) input gradient in flight": (1 if layer else 0, B * width * s),
                "W_h gradient term (H_out, H)": (0 if inductor else 1, Hout * H * s),
                "a step's weight gradients (compiled)": (1 if inductor else 0, c.layer_params(layer, d)),
                "its GEMM's oneDNN scratchpad": (1, c.gemm_scratch(Gemm(Hout, B, H, a_t=True)))})
            K = 8 * (T // 8)  # steps run in unrolled bodies; the T % 8 remainder ran last, its backward first
            if unrolled and K:  # the remainder's saved tensors are gone, and the last body's h_K, c_K
                for (what, count, each), left in zip(per_step, (7 * K - (1 if c.proj else 2), K - 1)):
                    sim.free(what)
                    sim.alloc(what, left if count else 0, each)
                # TorchScript indexes the input step by step: select's backward adds each step's input gradient
                # into a (T, B, I) buffer, and the body returns its 8 at once; W_hr's terms are summed as they come
                w_hr = H * c.proj * s
                sim.free(pieces)
                sim.moment(f"layer {layer}{' reverse' if d else ''} backward of the last unrolled 8-step body, "
                           "before it sums its weight gradients", {
                               "(B, H) gradients in flight": (3 + 2 * (T - K >= 3), u),
                               "8 steps' weight-gradient terms": (8, c.layer_params(layer, d) - w_hr),
                               "W_hr's gradient term": (1, w_hr),
                               "the input's gradient (T, B, I), select's backward": (1 if layer else 0, tb(width)),
                               "the body's 8 input gradients (B, I)": (8 if layer else 0, B * width * s),
                               "the last term's GEMM's oneDNN scratchpad": (
                                   1, c.gemm_scratch(Gemm(Hout, B, H, a_t=True)))})
                if layer:
                    sim.alloc(pieces, 1, B * width * s)
            for what, _, _ in per_step:
                sim.free(what)
            if d:
                sim.free(name(layer, d, "dY flipped (T, B, H_out)"))
            if layer:  # unbind's backward stacks the steps' input gradients
                sim.alloc(pieces, T - 1, B * width * s)
                stack = name(layer, d, "input gradient stacked (T, B, I)")
                sim.alloc(stack, 1, tb(width))
                sim.moment(f"layer {layer}{' reverse' if d else ''} backward: unbind's backward stacks its "
                           "input's gradients")
                sim.free(pieces)
                if d or D == 1:  # the layer's input buffer: flip's backward (a copy), or the stack itself
                    sim.alloc(grad_in, 1, tb(width))
                if d:
                    sim.moment(f"layer {layer} reverse backward: flip's backward")
                sim.free(stack)  # direction 0 of two: added in place into the input buffer
            if d:
                sim.free(name(layer, d, "flipped input (T, B, I)"))
        sim.free(grad_out)
        sim.free(inputs_of[layer])  # saved by the layer's GEMMs
        grad_out = _dropout_backward(sim, c, layer, grad_in, noise_of)
    return acts, [*sim.moments, c.optimizer_step()]


def _torchscript(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """scripted: TorchScript's profiling executor unrolls the loop by 8 (loop_unrolling.cpp kUnrollFactor)
    and differentiates each unrolled body as one graph: its backward holds the 8 steps' per-step
    weight-gradient terms (8 x the LSTM's parameters) until it sums them at its end."""
    if not c.train:
        return _autograd_ops(c)
    acts, moments = _autograd_ops(c)
    # K steps run in unrolled bodies; the T % 8 remainder runs last, so its backward runs first. The
    # (B, H) gradients in flight at the peak were read off the allocation timeline: 3 with a remainder
    # of 1 or 2 steps (T = 9, 10), 5 with 3 or 4 (T = 35, 20).
    K = 8 * (c.T // 8)
    if K:
        remainder = c.T - K
        live = c.model() | c.batch_and_state() | {
            "one-hot input": (1, c.TBV), "saved h, c, gates, tanh(c) of the unrolled steps": (7 * K - 2, c.u),
            "new state h, c": (2, c.u), "logits": (1, c.TBV), "loss and its gradient": (2, c.s),
            "dY (T, B, H)": (1, c.TBH), "(B, H) gradients in flight": (3 + 2 * (remainder >= 3), c.u),
            "8 steps' weight-gradient terms": (8, c.P_lstm),
            "the last term's GEMM's oneDNN scratchpad": (1, c.gemm_scratch(Gemm(c.H, c.B, c.H, a_t=True)))}
        moments.append(_Moment("backward of the last unrolled 8-step body, before it sums its weight gradients",
                               live))
    return acts, moments


def _inductor(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """compiled (cell scope): each call's forward graph returns what the min-cut partitioner saves.

    Counted in torch 2.13 (INDUCTOR_COUNTED_ON): per step the previous h and c and the four gates
    (tanh(c) is recomputed in backward), and the last step's c: 6T + 1 (B, H) tensors with the
    carried state. The backward graph of a step returns all 12 weight gradients of that step at once,
    which autograd then adds into the gradient buffers.
    """
    if not c.train:
        return _autograd_ops(c)
    acts = c.ops_activations()
    acts["per-step saved h, c, gates (partitioner)"] = acts.pop("per-step saved h, c, gates, tanh(c)")
    acts["per-step saved h, c, gates (partitioner)"] = (6 * c.T - 1, c.u)
    end_of_forward = _Moment("end of forward (loss computed, before zero_grad)", c.model() | c.batch_and_state()
                             | acts | {"new h": (1, c.u), "logits": (1, c.TBV), "loss": (1, c.s)})
    backward = _Moment("backward, step T-2: the step's 12 weight gradients before they are added", c.model()
                       | c.batch_and_state() | {
        "one-hot input and logits": (2, c.TBV), "saved (B, H) left, new state, gradients in flight": (6 * c.T - 8, c.u),
        "loss and its gradient": (2, c.s), "dY (T, B, H)": (1, c.TBH),
        "one step's 12 weight gradients": (1, c.P_lstm),
        "the last gradient's GEMM's oneDNN scratchpad": (1, c.gemm_scratch(Gemm(c.H, c.B, c.H, a_t=True)))})
    return acts, [end_of_forward, *c.loss_backward(acts, {"new h": (1, c.u)}), backward, c.optimizer_step()]


def _aten_native(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM on ATen's native CPU kernels (RNN.cpp): the input projection of all steps at once
    (T, B, 4H), then per step gates = linear_hh(h) + that, in-place sigmoid/tanh on its chunks."""
    B4H = c.B * 4 * c.H * c.s
    if not c.train:
        return {}, c.forward_moments({"one-hot input": (1, c.TBV), "input projection (T, B, 4H)": (1, c.T * B4H),
                                      "outputs h_1..h_T": (c.T, c.u), "last c": (1, c.u),
                                      "stacked outputs": (1, c.TBH)})
    acts = c.ops_activations()
    forward = _Moment("forward, torch.stack of the outputs", c.model() | c.batch_and_state() | {
        "one-hot input": (1, c.TBV), "input projection (T, B, 4H)": (1, c.T * B4H),
        "per-step gates (B, 4H)": (c.T, B4H), "per-step c, tanh(c), h": (3 * c.T, c.u),
        "stacked outputs": (1, c.TBH)})
    H4H = c.H * 4 * c.H * c.s
    backward = _Moment("backward, step T-2: W_hh gradient summed out of place", {
        "parameters": (1, c.P), **({"optimizer state": (1, c.O)} if c.O else {}),
        "gradients so far (output layer, W_hh, b_hh)": (1, c.P_lin + H4H + 4 * c.H * c.s),
        **c.batch_and_state(), "one-hot input and logits": (2, c.TBV), "loss and its gradient": (2, c.s),
        "per-step gates and their gradients (B, 4H)": (c.T, B4H),
        "saved h, c, tanh(c) left, new state, in flight": (3 * c.T - 4, c.u),
        "dY (T, B, H)": (1, c.TBH), "W_hh gradient term and the sum (4H, H)": (2, H4H)})
    return acts, [forward, *c.loss_backward(acts, {"new state h, c": (2, c.u)}), backward, c.optimizer_step()]


def _aten_native_stacked(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM on ATen's native CPU kernels with layers, directions or a projection (RNN.cpp's layer stack):
    per layer and direction the input projection of all steps (T, B, 4H), then per step the gates (B, 4H), c,
    tanh(c), h (and with a projection h W_hr, (B, P)), each step's gates kept; the reverse direction walks the
    steps backwards (no copy); the outputs stacked, a bidirectional layer's concatenated; dropout between
    layers. Backward per layer and direction as _aten_native's: each step swaps its gates for their gradients,
    which the input projection's backward stacks at the end."""
    T, B, H, s, u, uo, Hout, L, D = c.T, c.B, c.H, c.s, c.u, c.uo, c.H_out, c.L, c.D
    B4H, H4 = B * 4 * H * s, 4 * H
    p_drop = float(c.config["dropout"])

    name = _layer_name

    def saved(layer: int, d: int) -> list[tuple[str, int, int]]:
        return [(name(layer, d, "per-step gates (B, 4H)"), T, B4H), (name(layer, d, "per-step c, tanh(c), h (B, H)"),
                3 * T, u), (name(layer, d, "per-step projected h (B, P)"), T if c.proj else 0, uo)]

    sim = _step_start(c)
    layer_input, inputs_of, noise_of = "one-hot input", [], {}
    for lay in range(L):
        width = c.layer_input_size(lay)
        inputs_of.append(layer_input)
        outputs = []
        for d in range(D):
            projection = name(lay, d, "input projection (T, B, 4H)")
            sim.alloc(projection, 1, T * B4H)
            sim.moment(f"layer {lay}{' reverse' if d else ''}: the input projection")
            if d:
                sim.free(name(lay, 0, "input projection (T, B, 4H)"))
            if c.train:
                for what, count, each in saved(lay, d):
                    sim.alloc(what, count, each)
            else:
                sim.alloc(name(lay, d, "outputs h_1..h_T"), T, uo)
                sim.alloc(name(lay, d, "last c"), 1, u)
            sim.moment(f"layer {lay}{' reverse' if d else ''}: the last step", {
                "a step's gates and temporaries": (1 if not c.train else 0, B4H), "(B, H) in flight": (1, u)})
            stacked = name(lay, d, "stacked outputs (T, B, H_out)")
            sim.alloc(stacked, 1, T * B * Hout * s)
            sim.moment(f"layer {lay}{' reverse' if d else ''}: the outputs stacked")
            if not c.train:
                sim.free(name(lay, d, "outputs h_1..h_T"), T - 1)
            outputs.append(stacked)
        out = outputs[0]
        if D == 2:
            out = name(lay, 0, "both directions' outputs (T, B, 2 H_out)")
            sim.alloc(out, 1, 2 * T * B * Hout * s)
            sim.moment(f"layer {lay}: the directions' outputs concatenated")
            for gone in outputs:
                sim.free(gone)
        sim.free(name(lay, D - 1, "input projection (T, B, 4H)"))
        if not c.train and layer_input != "one-hot input":
            sim.free(layer_input)
        if p_drop and lay < L - 1:
            undropped: list[str] = []
            out = _dropout(sim, c, lay, out, noise_of, undropped)
            for gone in undropped:  # nothing keeps a layer's output once dropout has read it
                sim.free(gone)
        layer_input = out
    state = {f"new state {k}": v for k, v in c.state().items()}
    for k, v in state.items():
        sim.alloc(k, *v)
    sim.moment("the returned state stacked")
    for lay, d in c.layers_and_directions():  # each direction's h_T and c_T, kept until the state is stacked
        if c.train:
            sim.free(name(lay, d, "per-step c, tanh(c), h (B, H)"), 1 if c.proj else 2)
            sim.free(name(lay, d, "per-step projected h (B, P)"), 1)
        else:
            sim.free(name(lay, d, "outputs h_1..h_T"))
            sim.free(name(lay, d, "last c"))
    if not c.train:
        for gone in (layer_input, "one-hot input"):
            sim.free(gone)
        return {}, [*sim.moments, *c.forward_moments({}, at="the LSTM's outputs")]
    top = layer_input
    acts = _loss_and_output_layer(sim, c, set(state))
    grad_out = GRAD_OUT
    sim.free(top)
    H4H = Hout * H4 * s
    for lay in reversed(range(L)):
        width = c.layer_input_size(lay)
        grad_in = name(lay, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            sim.alloc(name(lay, d, "W_hh and b_hh gradients"), 1, H4H + H4 * s + H * c.proj * s)
            gates, hcs = saved(lay, d)[:2]
            sim.free(hcs[0], 4)  # step T-1's backward is done (as _aten_native's 3T - 4 with the new state)
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward, step T-2: W_hh's gradient summed out of place",
                       {"W_hh gradient term and the sum (4H, H_out)": (2, H4H)})
            for what, _, _ in saved(lay, d)[1:]:
                sim.free(what)
            stack = name(lay, d, "the gates' gradients stacked (T, B, 4H)")
            sim.alloc(stack, 1, T * B4H)
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward: the input projection's gradient stacked")
            sim.free(gates[0])  # the steps' gate gradients, which took the gates' place
            dx = name(lay, d, "the input's gradient (T, B, I)")
            if lay:
                sim.alloc(dx, 1, T * B * width * s)
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward: the input projection's backward", {
                "W_ih gradient": (1, width * H4 * s)})
            sim.alloc(name(lay, d, "weight gradients"), 1, c.layer_params(lay, d))
            sim.free(name(lay, d, "W_hh and b_hh gradients"))
            sim.free(stack)
            if lay and (d or D == 1):
                sim.alloc(grad_in, 1, T * B * width * s)
            sim.free(dx)
        sim.free(grad_out)
        sim.free(inputs_of[lay])
        grad_out = _dropout_backward(sim, c, lay, grad_in, noise_of)
    return acts, [*sim.moments, c.optimizer_step()]


#: (B, H) temporaries one time step allocates beyond fused_cell.LSTMFunction's buffers, at its fullest:
#: (forward, backward). Eager (fused_cell.cell_forward at its cat): the GEMM's (B, 4H) result, the four
#: gates, c, h and the cat of the gates; backward at its cat: dh, tanh(c), dc, the four gate gradients and
#: their cat (the last step's dh = dy + dh_n included). Inductor's kernels allocate only their outputs.
#: Triton's kernels write straight into the buffers; only the last step's dh is new.
#: (B, H) temporaries one time step allocates beyond fused_cell.LSTMFunction's buffers, at its fullest:
#: (forward, backward). fused (eager) works in place: none forward, backward's dh (the GEMM's result, or
#: dy + dh_n at the last step). Inductor's forward graph, measured: 4 (its mutated inputs' copies).
#: Triton's kernels write straight into the buffers; only the last step's dh is new.
FUSED_STEP_TEMPORARIES = {"fused": (0, 1), "fused_compiled": (4, 1), "triton": (0, 1)}


def _fused(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """The fused sequence (lstm_impls/fused_cell.py LSTMFunction): the input projection of all steps
    (T, B, 4H), buffers for the outputs, every step's c and activated gates; then what backward reads:
    fused and fused_compiled turn the gates into backward's factors in place, beside F and KC (T, B, H),
    and keep no c; triton keeps the gates and every c. Backward fills the gates' gradients (T, B, 4H),
    then computes the weights' gradients in one GEMM each."""
    G4 = c.T * c.B * 4 * c.H * c.s  # one (T, B, 4H) buffer
    fwd_temps, bwd_temps = FUSED_STEP_TEMPORARIES[c.impl]
    buffers = {"outputs y (T, B, H)": (1, c.TBH), "every step's c (T, B, H)": (1, c.TBH)}
    H4 = 4 * c.H
    # bfloat16 on oneDNN: each GEMM's scratchpad while it runs (the input projection; a step's h W_h; in
    # backward a step's dgates W_h^T, and the weights' gradients), zero elsewhere
    scratch = c.gemm_scratch
    projection = _Moment("forward, the input projection's GEMM (its oneDNN scratchpad)", c.model()
                         | c.batch_and_state() | {"one-hot input": (1, c.TBV), "input projection (T, B, 4H)": (1, G4),
                                                  "oneDNN GEMM scratchpad": (
                                                      1, scratch(Gemm.addmm(c.TB, c.I, H4, "row")))})
    step_gemm = {"a step's GEMM's oneDNN scratchpad": (1, scratch(Gemm.addmm(c.B, c.H, H4, "full", out=True)))}
    if not c.train:  # no gates kept: one step's, reused
        return {}, [projection, *c.forward_moments(
            {"one-hot input": (1, c.TBV), "input projection (T, B, 4H)": (1, G4)} | buffers
            | {"one step's gates buffer (B, 4H)": (4, c.u), "a step's temporaries": (fwd_temps, c.u)} | step_gemm,
            at="a time step (input projection and every buffer alive)")]
    triton = c.impl == "triton"
    kept = ({"carried state h, c": (2, c.u), "every step's c (T, B, H)": (1, c.TBH)} if triton else
            {"carried state h": (1, c.u), "F and KC (T, B, H)": (2, c.TBH)})
    acts = {"one-hot input": (1, c.TBV), "outputs y (T, B, H)": (1, c.TBH),
            "activated gates, or backward's factors (T, B, 4H)": (1, G4)} | kept | {
        "log-softmax": (1, c.TBV), "target (int64)": (1, 8 * c.TB), "total weight": (1, c.s)}
    alive = {k: v for k, v in acts.items() if k != "carried state h"}  # it is batch_and_state's h
    saved = {k: v for k, v in alive.items() if k not in ("log-softmax", "target (int64)", "total weight")}
    base = c.model() | c.batch_and_state()
    loop = base | {"one-hot input": (1, c.TBV), "activated gates, or backward's factors (T, B, 4H)": (1, G4)} | buffers
    moments = [projection, _Moment("forward, a time step (input projection and every buffer alive)", loop | {
        "input projection (T, B, 4H)": (1, G4), "a step's temporaries": (fwd_temps, c.u)} | step_gemm)]
    # backward_factors: eager, in place, it holds the buffers and a few (T, B, H) temporaries, less than
    # backward's first step adds (the outputs' and the gates' gradients: 5 (T, B, H)). Inductor's graph of
    # it mutates its input out of place: measured, 3 (T, B, 4H) and 3 (T, B, H) buffers at once.
    if c.impl == "fused_compiled":
        moments.append(_Moment("forward, backward's factors (Inductor's graph, its buffers)", loop | {
            "returned c": (1, c.u), "the graph's buffers (T, B, 4H) and (T, B, H)": (1, 3 * G4 + 3 * c.TBH)}))
    elif c.impl == "fused":  # eager, at its fullest (K_I's product): F and KC beside four (T, B, H) temporaries
        moments.append(_Moment("forward, backward's factors (eager, in place)", loop | {
            "returned c": (1, c.u), "F and KC (T, B, H)": (2, c.TBH),
            "tanh(c), C~ * I, 1 - I, K_I (T, B, H)": (4, c.TBH)}))
    end_of_forward = _Moment("end of forward (loss computed, before zero_grad)", base | alive | {
        "new state h, c": (2, c.u), "logits": (1, c.TBV), "loss": (1, c.s)})
    # backward: zero_grad freed the gradients; the output layer's exist, the LSTM's come at the end
    back = ({k: v for k, v in base.items() if k != "gradients"} | saved | {
        "gradients of the output layer": (1, c.P_lin), "new state h, c": (2, c.u), "logits": (1, c.TBV),
        "loss and its gradient": (2, c.s), "dY (T, B, H)": (1, c.TBH), "gates' gradients (T, B, 4H)": (1, G4),
        "zero gradients of the returned h, c": (2, c.u), "dc": (1, c.u)})
    H4H = c.H * 4 * c.H * c.s
    moments += [
        end_of_forward, *c.loss_backward(alive, {"new state h, c": (2, c.u)}),
        _Moment("backward, step T-1 (the first): a step's temporaries", back | {
            "a step's temporaries": (bwd_temps, c.u)}),
        _Moment("backward, step T-2: dh's GEMM (its oneDNN scratchpad)", back | {
            "dh": (1, c.u), "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(c.B, H4, c.H, "full", b_t=True)))}),
        _Moment("backward, W_h's gradient: h_0's term (its GEMM's oneDNN scratchpad)", back | {
            "W_h gradient: h_0's term": (1, H4H),
            "oneDNN GEMM scratchpad": (1, scratch(Gemm(c.H, c.B, H4, a_t=True)))}),
        _Moment("backward, W_h's gradient: h_0's term and the sum over steps (H, 4H)", back | {
            "W_h gradient: h_0's term and the sum": (2, H4H),
            "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(c.H, c.TB - c.B, H4, "full", a_t=True)))}),
        _Moment("backward, W_x's gradient (its GEMM's oneDNN scratchpad)", back | {
            "W_h and W_x gradients": (1, H4H + c.I * H4 * c.s),
            "oneDNN GEMM scratchpad": (1, scratch(Gemm(c.I, c.TB, H4, a_t=True)))}),
        _Moment("backward, the bias's gradient: every LSTM weight gradient computed", back | {
            "LSTM weight gradients": (1, H4H + c.I * 4 * c.H * c.s + 4 * c.H * c.s)}),
        c.optimizer_step()]
    return acts, moments


def _stacked_fused(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """fused, fused_compiled and triton with layers or directions: forward_stacked around the fused sequence,
    each layer and direction counted as _fused counts one (the input projection, the buffers, backward's
    factors; the gates' gradients and the weights' at the end of its backward), glued as _stacked_ops glues
    the chapter's loop (flipped input and outputs, concatenation, dropout's noise, the stacked state). Its
    backward also computes the input's gradient (T, B, I) in one GEMM, where the layer's input needs one, and
    makes a slice of a bidirectional layer's output gradient contiguous."""
    T, B, H, s, u, L, D = c.T, c.B, c.H, c.s, c.u, c.L, c.D
    p_drop = float(c.config["dropout"])
    G4, H4 = T * B * 4 * H * s, 4 * H
    fwd_temps, bwd_temps = FUSED_STEP_TEMPORARIES[c.impl]
    triton = c.impl == "triton"
    scratch = c.gemm_scratch

    name = _layer_name

    def kept(layer: int, d: int) -> list[tuple[str, int, int]]:  # what the sequence saves beside x, h0
        return [(name(layer, d, "outputs y (T, B, H)"), 1, c.TBH),
                (name(layer, d, "activated gates, or backward's factors (T, B, 4H)"), 1, G4)] + (
            [(name(layer, d, "every step's c (T, B, H)"), 1, c.TBH)] if triton else
            [(name(layer, d, "F and KC (T, B, H)"), 2, c.TBH)])

    sim = _step_start(c)
    layer_input, inputs_of, noise_of = "one-hot input", [], {}
    at_next_layer: list[str] = []
    for lay in range(L):
        width = c.layer_input_size(lay)
        inputs_of.append(layer_input)
        for gone in at_next_layer:
            sim.free(gone)
        at_next_layer, outputs = [], []
        for d in range(D):
            if d:
                sim.alloc(name(lay, d, "flipped input (T, B, I)"), 1, T * B * width * s)
                if not c.train:
                    at_next_layer.append(name(lay, d, "flipped input (T, B, I)"))
            step_gemm = {"a step's GEMM's oneDNN scratchpad": (1, scratch(Gemm.addmm(B, H, H4, "full", out=True)))}
            sim.moment(f"layer {lay}{' reverse' if d else ''}: the input projection's GEMM", {
                "input projection (T, B, 4H)": (1, G4),
                "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(c.TB, width, H4, "row")))})
            y = name(lay, d, "outputs y (T, B, H)")
            sim.alloc(y, 1, c.TBH)
            sim.alloc(name(lay, d, "every step's c (T, B, H)"), 1, c.TBH)
            gates = name(lay, d, "activated gates, or backward's factors (T, B, 4H)")
            if c.train:
                sim.alloc(gates, 1, G4)
                sim.moment(f"layer {lay}{' reverse' if d else ''}: a time step", {
                    "input projection (T, B, 4H)": (1, G4), "a step's temporaries": (fwd_temps, u)} | step_gemm)
                if c.impl == "fused_compiled":
                    sim.moment(f"layer {lay}{' reverse' if d else ''}: backward's factors (Inductor's graph)", {
                        "returned c": (1, u), "the graph's buffers (T, B, 4H) and (T, B, H)": (1, 3 * G4 + 3 * c.TBH)})
                if not triton:  # eager backward_factors at its fullest (K_I's product): tanh(c), C~ * I, 1 - I, K_I
                    sim.alloc(name(lay, d, "F and KC (T, B, H)"), 2, c.TBH)
                    if c.impl == "fused":
                        sim.moment(f"layer {lay}{' reverse' if d else ''}: backward's factors (eager, in place)", {
                            "tanh(c), C~ * I, 1 - I, K_I (T, B, H)": (4, c.TBH)})
                    sim.free(name(lay, d, "every step's c (T, B, H)"))
            else:
                sim.moment(f"layer {lay}{' reverse' if d else ''}: a time step (no grad)", {
                    "input projection (T, B, 4H)": (1, G4), "one step's gates buffer (B, 4H)": (4, u),
                    "a step's temporaries": (fwd_temps, u)} | step_gemm)
                sim.free(name(lay, d, "every step's c (T, B, H)"))
            sim.alloc(name(lay, d, "h_n, c_n (clones)"), 2, u)
            if d:
                flipped = name(lay, d, "outputs flipped back (T, B, H)")
                sim.alloc(flipped, 1, c.TBH)
                outputs.append(flipped)
                if not c.train:
                    sim.free(y)  # `Y` held it; nothing saves it
            else:
                outputs.append(y)
        out = outputs[0]
        if D == 2:
            out = name(lay, 0, "both directions' outputs (T, B, 2H)")
            sim.alloc(out, 1, 2 * c.TBH)
            sim.moment(f"layer {lay}: the directions' outputs concatenated")
            at_next_layer += outputs[1:] if c.train else outputs  # a sequence saves its own y
        if not c.train and layer_input != "one-hot input":
            at_next_layer.append(layer_input)
        if p_drop and lay < L - 1:
            out = _dropout(sim, c, lay, out, noise_of, at_next_layer if not c.train else None)
        layer_input = out
    state = {f"new state {k}": v for k, v in c.state().items()}
    if c.stacked:
        for k, v in state.items():
            sim.alloc(k, *v)
        sim.moment("forward_stacked's returned state stacked")
    for gone in at_next_layer:
        sim.free(gone)
    for lay, d in c.layers_and_directions():
        sim.free(name(lay, d, "h_n, c_n (clones)"))
    if not c.stacked:
        for k, v in state.items():
            sim.alloc(k, *v)
    if not c.train:
        for gone in (layer_input, "one-hot input"):
            sim.free(gone)
        return {}, [*sim.moments, *c.forward_moments({}, at="the LSTM's outputs")]
    top = layer_input
    acts = _loss_and_output_layer(sim, c, set(state) | set(c.batch_and_state()))
    acts["carried state h (each sequence saves its h0)"] = (1, c.L * c.D * c.uo)
    grad_out = GRAD_OUT
    if D == 2:
        sim.free(top)  # the concatenation; a one-direction top layer's y stays saved by its sequence
    H4H = H * H4 * s
    for lay in reversed(range(L)):
        width = c.layer_input_size(lay)
        grad_in = name(lay, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            if D == 2:  # flip's backward (reverse), or dy.contiguous() of the concatenation's slice
                sim.alloc(name(lay, d, "dY of this direction (T, B, H)"), 1, c.TBH)
            sim.alloc(name(lay, d, "gates' gradients (T, B, 4H)"), 1, G4)
            sim.alloc(name(lay, d, "dc, zero gradients of h_n, c_n"), 3, u)
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward, step T-1 (the first)", {
                "a step's temporaries": (bwd_temps, u)})
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward, step T-2: dh's GEMM", {
                "dh": (1, u), "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(B, H4, H, "full", b_t=True)))})
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward, W_h's gradient: h_0's term and the sum", {
                "W_h gradient: h_0's term and the sum": (2, H4H),
                "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(H, c.TB - B, H4, "full", a_t=True)))})
            dx = name(lay, d, "the input's gradient dx (T, B, I)")
            sim.alloc(name(lay, d, "W_h's gradient"), 1, H4H)
            if lay:
                sim.alloc(dx, 1, T * B * width * s)
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward, W_x's gradient", {
                "W_x gradient": (1, width * H4 * s),
                "oneDNN GEMM scratchpad": (1, scratch(Gemm(width, c.TB, H4, a_t=True)))})
            sim.free(name(lay, d, "W_h's gradient"))
            sim.alloc(name(lay, d, "weight gradients"), 1, c.layer_params(lay, d))
            sim.moment(f"layer {lay}{' reverse' if d else ''} backward: every weight gradient computed")
            sim.free(name(lay, d, "gates' gradients (T, B, 4H)"))
            sim.free(name(lay, d, "dc, zero gradients of h_n, c_n"))
            sim.free(name(lay, d, "dY of this direction (T, B, H)"))
            for what, _, _ in kept(lay, d):
                sim.free(what)
            if d:
                sim.free(name(lay, d, "flipped input (T, B, I)"))
            if lay and (d or D == 1):  # the layer input's gradient buffer: flip's backward (a copy), or dx itself
                sim.alloc(grad_in, 1, T * B * width * s)
                if d:
                    sim.moment(f"layer {lay} reverse backward: flip's backward")
            sim.free(dx)  # direction 0 of two: added in place into the buffer
        sim.free(grad_out)
        if not lay or inputs_of[lay] != name(lay - 1, 0, "outputs y (T, B, H)"):
            sim.free(inputs_of[lay])  # a concatenation or dropout's output; a lower y stays saved by its sequence
        grad_out = _dropout_backward(sim, c, lay, grad_in, noise_of)
    return acts, [*sim.moments, c.optimizer_step()]


def _onednn_workspace_bytes(c: _Counts) -> int:
    """oneDNN's LSTM training workspace (rnn_utils set_workspace_sizes + set_offsets), 1 layer, 1 direction."""
    T, B, H, I, s = c.T, c.B, c.H, c.I, c.s
    f32 = 4
    states_ld = good_ld(max(I, H), s)
    diff_ld = good_ld(max(I, H), f32)
    regions = [  # in bfloat16 the gates, ht and both states are bfloat16, the diff states float32 (measured:
        # the workspace mkldnn_rnn_layer returns, 8 shapes, the same on AVX512 with and without AVX512-BF16)
        T * B * good_ld(4 * H, s) * s,  # ws_gates
        T * B * good_ld(H, s) * s,  # ws_ht
        2 * (T + 1) * B * states_ld * s,  # ws_states_layer (L + 1 layers of T + 1 states)
        2 * (T + 1) * B * H * s,  # ws_states_iter_c (src_iter_c: the cell's dtype)
        2 * (T + 1) * B * diff_ld * f32,  # ws_diff_states_layer
        2 * (T + 1) * B * diff_ld * f32,  # ws_diff_states_iter
        2 * (T + 1) * B * H * f32,  # ws_diff_states_iter_c
    ]
    return sum(_page(r) for r in regions)


def _onednn(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM through oneDNN (aten mkldnn_rnn_layer): workspace from oneDNN's layout rules."""
    T, B, H, I, s, f32 = c.T, c.B, c.H, c.I, c.s, 4
    bias_sum = (1, 4 * H * s)
    if s != f32 and c.onednn:
        return _onednn_bf16(c)
    if not c.train:  # inference: brgemm kernels; weights reordered to ldgOi16o; scratchpad holds the states
        n16 = _round_up(H, 16)
        scratch = (_page(2 * (T + 1) * B * good_ld(max(I, H), s) * s) + _page(2 * (T + 1) * B * H * f32)
                   + _page(B * good_ld(4 * H, f32) * f32) + _page(B * good_ld(H, s) * s) + 4952)
        live = c.model() | c.batch_and_state() | {
            "one-hot input": (1, c.TBV), "outputs (T, B, H)": (1, c.TBH), "h_n, c_n": (2, c.u), "bias sum": bias_sum,
            "weights reordered (ldgOi16o)": (1, 4 * n16 * (I + H) * s), "oneDNN scratchpad": (1, scratch)}
        return {}, [_Moment("inside mkldnn_rnn_layer (inference)", live)]
    W = _onednn_workspace_bytes(c)
    acts = {"one-hot input": (1, c.TBV), "carried state h, c": (2, c.u), "outputs (T, B, H)": (1, c.TBH),
            "h_n, c_n (layer outputs)": (2, c.u), "oneDNN workspace": (1, W), "log-softmax": (1, c.TBV),
            "target (int64)": (1, 8 * c.TB), "total weight": (1, c.s)}
    scratch = (_page(T * B * good_ld(4 * H, f32) * f32) + 2 * _page(B * good_ld(H, f32) * f32) + 4664)
    live = c.model() | c.batch_and_state()
    live["gradients"] = (1, c.G - 4 * H * s)  # the clone of diff_b (bias_hh's gradient) comes after
    live |= {
        "one-hot input and logits": (2, c.TBV), "outputs and dY (T, B, H)": (2, c.TBH),
        "h_n, c_n, returned state, zero grad_hy, grad_cy": (6, c.u), "oneDNN workspace": (1, W),
        "loss and its gradient": (2, c.s), "diff_x (T, B, I) float32": (1, T * B * I * f32),
        "diff_hx, diff_cx float32": (2, B * H * f32), "bias sum, and oneDNN's bias copy": (2, 4 * H * s),
        "weights reordered for forward (ldigo)": (1, (I + H) * good_ld(4 * H, s) * s),
        # ldgoi with a good leading dimension is torch's own (4H, K) layout unless good_ld(K) != K
        "weights reordered for backward (ldgoi)": (1, sum(good_ld(k, s) * 4 * H * s for k in (I, H)
                                                          if good_ld(k, s) != k)),
        "oneDNN scratchpad": (1, scratch)}
    return acts, [_Moment("inside mkldnn_rnn_layer_backward (its scratchpad allocated)", live),
                  *c.loss_backward(acts, {"returned state h, c": (2, c.u)}), c.optimizer_step()]


def _onednn_stacked(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM through oneDNN with layers or directions: one mkldnn_rnn_layer per layer and
    direction (the reverse one reads its input backwards, no copy), each with the workspace, reordered weights
    and scratchpad of a one-layer LSTM whose input is that layer's (_onednn's counts, _onednn_workspace_bytes);
    a bidirectional layer concatenates both outputs, dropout between layers keeps its noise. Backward runs
    the layers top down, reverse direction first, each in mkldnn_rnn_layer_backward as in one layer."""
    T, B, H, s, u, L, D = c.T, c.B, c.H, c.s, c.u, c.L, c.D
    f32 = 4
    low = s != f32  # bfloat16: oneDNN's own buffers read off oneDNN per layer's shape, as _onednn_bf16 reads them
    if low and not c.onednn:
        raise NotModelled(f"oneDNN's own {c.dtype} buffers are not read off oneDNN for this CPU")
    own = "oneDNN's own buffers (reordered weights, GEMM buffers, scratchpad)"
    p_drop = float(c.config["dropout"])

    def layer(n_in: int) -> _Counts:  # a one-layer count whose input is this layer's
        one = copy.copy(c)
        one.I = n_in
        return one

    name = _layer_name

    def reorders(n_in: int) -> dict[str, Term]:  # the weights as mkldnn_rnn_layer reorders them for forward
        return {"weights reordered (ldigo)": (1, (n_in + H) * good_ld(4 * H, s) * s)}

    sim = _step_start(c)
    inputs_of, noise_of, outputs_of = [], {}, {}
    layer_input = "one-hot input"
    held: list[str] = []  # inference: a layer's raw output, alive until the next layer has run
    held_before: list[str] = []
    for lay in range(L):
        n_in = c.layer_input_size(lay)
        inputs_of.append(layer_input)
        for d in range(D):
            one = layer(n_in)
            if c.train:
                sim.alloc(name(lay, d, "outputs (T, B, H)"), 1, c.TBH)
                sim.alloc(name(lay, d, "oneDNN workspace"), 1, _onednn_workspace_bytes(one))
                sim.alloc(name(lay, d, "h_n, c_n (layer outputs)"), 2, u)
                scratch = _page(T * B * good_ld(4 * H, f32) * f32) + 2 * _page(B * good_ld(H, f32) * f32) + 4664
                sim.moment(f"inside mkldnn_rnn_layer (layer {lay}{' reverse' if d else ''}, training)", {
                    "bias sum": (1, 4 * H * s), own: (1, c.onednn.rnn_bytes("forward", T, B, H, n_in, c.dtype))}
                    if low else reorders(n_in) | {"oneDNN scratchpad": (1, scratch)})
            else:  # inference, as _onednn's: brgemm kernels, weights reordered to ldgOi16o, states in the scratchpad
                sim.alloc(name(lay, d, "outputs (T, B, H)"), 1, c.TBH)
                sim.alloc(name(lay, d, "h_n, c_n (layer outputs)"), 2, u)
                scratch = (_page(2 * (T + 1) * B * good_ld(max(n_in, H), s) * s) + _page(2 * (T + 1) * B * H * f32)
                           + _page(B * good_ld(4 * H, f32) * f32) + _page(B * good_ld(H, s) * s) + 4952)
                sim.moment(f"inside mkldnn_rnn_layer (layer {lay}{' reverse' if d else ''}, inference)", {
                    "bias sum": (1, 4 * H * s), own: (1, c.onednn.rnn_bytes("inference", T, B, H, n_in, c.dtype))}
                    if low else {"bias sum": (1, 4 * H * s), "oneDNN scratchpad": (1, scratch),
                                 "weights reordered (ldgOi16o)": (1, 4 * _round_up(H, 16) * (n_in + H) * s)})
            outputs_of[lay, d] = name(lay, d, "outputs (T, B, H)")
        out = outputs_of[lay, 0]
        if D == 2:
            out = name(lay, 0, "both directions' outputs (T, B, 2H)")
            sim.alloc(out, 1, 2 * c.TBH)
            sim.moment(f"layer {lay}: the directions' outputs concatenated")
            if not c.train:  # the last direction's output stays until the next layer has run (measured)
                sim.free(outputs_of[lay, 0])
                held.append(outputs_of[lay, 1])
        if p_drop and lay < L - 1:
            out = _dropout(sim, c, lay, out, noise_of, held if not c.train else None)
        if not c.train and layer_input != "one-hot input":
            sim.free(layer_input)  # nothing saves it
        for gone in held_before:
            sim.free(gone)
        held_before, held = held, []
        layer_input = out
    state = {f"new state {k}": v for k, v in c.state().items()}
    for k, v in state.items():
        sim.alloc(k, *v)
    sim.moment("the returned state stacked")
    top = layer_input
    if not c.train:  # then the output layer (output_gemms) and the loss, as in one layer
        for lay, d in c.layers_and_directions():
            sim.free(name(lay, d, "h_n, c_n (layer outputs)"))
        for gone in [top, "one-hot input", *held_before]:
            sim.free(gone)
        return {}, [*sim.moments, *c.forward_moments({}, at="the LSTM's outputs")]
    acts = _loss_and_output_layer(sim, c, set(state))
    grad_out = GRAD_OUT
    if D == 2:
        sim.free(top)
    for lay in reversed(range(L)):
        n_in = c.layer_input_size(lay)
        grad_in = name(lay, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            one = layer(n_in)
            scratch = _page(T * B * good_ld(4 * H, f32) * f32) + 2 * _page(B * good_ld(H, f32) * f32) + 4664
            if D == 2:  # cat's backward gives a slice of dY; mkldnn_rnn_layer_backward makes it contiguous
                sim.alloc(name(lay, d, "dY contiguous (T, B, H)"), 1, c.TBH)
            sim.alloc(name(lay, d, "diff_x (T, B, I) float32"), 1, T * B * n_in * f32)
            if low:  # backward computes in float32, its weight gradients converted at its end
                sim.moment(f"inside mkldnn_rnn_layer_backward (layer {lay}{' reverse' if d else ''}, {c.dtype})", {
                    "zero grad_hy, grad_cy": (2, u), "bias sum": (1, 4 * H * s),
                    "diff_hx, diff_cx float32": (2, B * H * f32),
                    "weight gradients float32 (diff_w1, diff_w2, diff_b)": (1, (n_in + H + 1) * 4 * H * f32),
                    "dY, grad_hy, grad_cy in float32": (1, (T + 2) * B * H * f32),
                    own: (1, c.onednn.rnn_bytes("backward", T, B, H, n_in, c.dtype))})
            else:
                sim.alloc(name(lay, d, "weight gradients but bias_hh's"), 1, c.layer_params(lay, d) - 4 * H * s)
                sim.moment(f"inside mkldnn_rnn_layer_backward (layer {lay}{' reverse' if d else ''}, its scratchpad)", {
                    "zero grad_hy, grad_cy": (2, u), "diff_hx, diff_cx float32": (2, B * H * f32),
                    "bias sum, and oneDNN's bias copy": (2, 4 * H * s),
                    "weights reordered for forward (ldigo)": (1, (n_in + H) * good_ld(4 * H, s) * s),
                    "weights reordered for backward (ldgoi)": (1, sum(good_ld(k, s) * 4 * H * s for k in (n_in, H)
                                                                      if good_ld(k, s) != k)),
                    "oneDNN scratchpad": (1, scratch)})
            sim.free(name(lay, d, "weight gradients but bias_hh's"))
            sim.alloc(name(lay, d, "weight gradients"), 1, c.layer_params(lay, d))
            sim.free(name(lay, d, "dY contiguous (T, B, H)"))
            for what in ("outputs (T, B, H)", "oneDNN workspace", "h_n, c_n (layer outputs)"):
                sim.free(name(lay, d, what))
            diff_x = name(lay, d, "diff_x (T, B, I) float32")
            if lay == 0:
                sim.free(diff_x)  # the one-hot input needs no gradient
            elif d == D - 1:
                sim.free(diff_x)
                sim.alloc(grad_in, 1, T * B * n_in * s)  # the layer input's gradient buffer
            else:
                sim.free(diff_x)  # added into it
        sim.free(grad_out)
        sim.free(inputs_of[lay])
        grad_out = _dropout_backward(sim, c, lay, grad_in, noise_of)
    return acts, [*sim.moments, c.optimizer_step()]


def _onednn_bf16(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM through oneDNN in bfloat16 (or float16 inference): the tensors counted as in float32,
    oneDNN's own buffers (reordered weights, GEMM buffers, scratchpad) read off oneDNN
    (bench/instruments/onednn.py). Backward computes in float32: copies of dY, grad_hy, grad_cy and float32
    weight gradients, converted at its end."""
    T, B, H, I, s, f32 = c.T, c.B, c.H, c.I, c.s, 4
    own = "oneDNN's own buffers (reordered weights, GEMM buffers, scratchpad)"
    outputs = {"one-hot input": (1, c.TBV), "outputs (T, B, H)": (1, c.TBH), "h_n, c_n": (2, c.u),
               "bias sum": (1, 4 * H * s)}
    base = c.model() | c.batch_and_state()
    if not c.train:
        return {}, [_Moment("inside mkldnn_rnn_layer (inference)", base | outputs | {
            own: (1, c.onednn.rnn_bytes("inference", T, B, H, I, c.dtype))})]
    W = _onednn_workspace_bytes(c)
    acts = {"one-hot input": (1, c.TBV), "carried state h, c": (2, c.u), "outputs (T, B, H)": (1, c.TBH),
            "h_n, c_n (layer outputs)": (2, c.u), "oneDNN workspace": (1, W), "log-softmax": (1, c.TBV),
            "target (int64)": (1, 8 * c.TB), "total weight": (1, c.s)}
    forward = _Moment("inside mkldnn_rnn_layer (training forward)", base | outputs | {
        "oneDNN workspace": (1, W), own: (1, c.onednn.rnn_bytes("forward", T, B, H, I, c.dtype))})
    live = {k: v for k, v in base.items() if k != "gradients"} | {
        "gradients of the output layer": (1, c.P_lin),
        "one-hot input and logits": (2, c.TBV), "outputs and dY (T, B, H)": (2, c.TBH),
        "h_n, c_n, returned state, zero grad_hy, grad_cy": (6, c.u), "oneDNN workspace": (1, W),
        "loss and its gradient": (2, c.s), "bias sum": (1, 4 * H * s),
        "diff_x (T, B, I) float32": (1, T * B * I * f32), "diff_hx, diff_cx float32": (2, B * H * f32),
        "weight gradients float32 (diff_w1, diff_w2, diff_b)": (1, (I + H + 1) * 4 * H * f32),
        "dY, grad_hy, grad_cy in float32": (1, (T + 2) * B * H * f32),
        own: (1, c.onednn.rnn_bytes("backward", T, B, H, I, c.dtype))}
    return acts, [forward, _Moment("inside mkldnn_rnn_layer_backward (its scratchpad allocated)", live),
                  *c.loss_backward(acts, {"returned state h, c": (2, c.u)}), c.optimizer_step()]


def _cudnn(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM on cuDNN (aten/src/ATen/native/cudnn/RNN.cpp): flat weights; reserve kept for backward."""
    T, B, H, I, s = c.T, c.B, c.H, c.I, c.s
    reserve = 5 * T * B * H * s  # fitted: cudnn_reserve
    workspace = T * B * 4 * H * s  # fitted: cudnn_workspace
    # flatten_parameters skips bfloat16 (cudnn.CUDNN_TENSOR_DTYPES): each call copies the weights, saved for backward
    weight_copy = {"weight copy (bfloat16 is not flattened)": (1, c.P_lstm)} if c.dtype == "bfloat16" else {}
    base = c.model() | c.batch_and_state()
    if not c.train:
        live = base | {"one-hot input": (1, c.TBV), "outputs (T, B, H)": (1, c.TBH), "h_n, c_n": (2, c.u),
                       "cuDNN workspace": (1, workspace)} | weight_copy
        return {}, [_Moment("inside _cudnn_rnn (inference)", live)]
    acts = {"one-hot input": (1, c.TBV), "carried state h, c": (2, c.u), "outputs (T, B, H)": (1, c.TBH),
            "cuDNN reserve": (1, reserve), "log-softmax": (1, c.TBV), "target (int64)": (1, 8 * c.TB),
            "total weight": (1, c.s)} | weight_copy
    forward = _Moment("inside _cudnn_rnn (training forward)", base | {
        "one-hot input": (1, c.TBV), "outputs (T, B, H)": (1, c.TBH), "h_n, c_n": (2, c.u),
        "cuDNN reserve": (1, reserve), "cuDNN workspace": (1, workspace)} | weight_copy)
    live = {k: v for k, v in base.items() if k != "gradients"} | {
        "gradients of the output layer": (1, c.P_lin), "one-hot input and logits": (2, c.TBV),
        "outputs and dY (T, B, H)": (2, c.TBH), "cuDNN reserve": (1, reserve), "new state, zero grad_hy, grad_cy":
        (4, c.u), "loss and its gradient": (2, c.s), "dx (T, B, I)": (1, T * B * I * s), "dhx, dcx": (2, c.u),
        "flat dw": (1, c.P_lstm), "cuDNN workspace": (1, workspace)} | weight_copy
    return acts, [forward, _Moment("inside _cudnn_rnn_backward (weights)", live), c.optimizer_step()]


def _cudnn_stacked(c: _Counts) -> tuple[dict[str, Term], list[_Moment]]:
    """nn.LSTM on cuDNN with layers, directions, a projection or dropout: one _cudnn_rnn call for the whole stack
    (flat weights, one reserve, the output (T, B, D * H_out), the state (L * D, B, ...)), counted as _cudnn counts
    one layer. The reserve is FITTED's cudnn_reserve for L layers, (6L - 1) elements per (t, b, h), taken per
    direction; with dropout cuDNN's masks are assumed inside it, and its dropout states (cudnnDropoutGetStatesSize)
    are not counted. Unmeasured: counted for a GPU this project has not had."""
    T, B, H, I, s, L, D = c.T, c.B, c.H, c.I, c.s, c.L, c.D
    reserve = D * (6 * L - 1) * T * B * H * s  # fitted: cudnn_reserve, per direction (assumed)
    workspace = D * T * B * 4 * H * s  # fitted: cudnn_workspace, one layer's input projections per direction
    weight_copy = {"weight copy (bfloat16 is not flattened)": (1, c.P_lstm)} if c.dtype == "bfloat16" else {}
    state = {f"new state {k}": v for k, v in c.state().items()}
    base = c.model() | c.batch_and_state()
    outputs = {"one-hot input": (1, c.TBV), "outputs (T, B, D H_out)": (1, c.TBY)} | state
    if not c.train:
        return {}, [_Moment("inside _cudnn_rnn (inference)", base | outputs | {"cuDNN workspace": (1, workspace)}
                            | weight_copy)]
    acts = {"one-hot input": (1, c.TBV), "outputs (T, B, D H_out)": (1, c.TBY), "cuDNN reserve": (1, reserve),
            "log-softmax": (1, c.TBV), "target (int64)": (1, 8 * c.TB), "total weight": (1, s)} | {
        f"carried state {k}": v for k, v in c.state().items()} | weight_copy
    forward = _Moment("inside _cudnn_rnn (training forward)", base | outputs | {
        "cuDNN reserve": (1, reserve), "cuDNN workspace": (1, workspace)} | weight_copy)
    live = {k: v for k, v in base.items() if k != "gradients"} | state | {
        "gradients of the output layer": (1, c.P_lin), "one-hot input and logits": (2, c.TBV),
        "outputs and dY (T, B, D H_out)": (2, c.TBY), "cuDNN reserve": (1, reserve), "loss and its gradient": (2, s),
        "dx (T, B, I)": (1, T * B * I * s), "flat dw": (1, c.P_lstm), "cuDNN workspace": (1, workspace)} | {
        f"zero grad of the returned {k}": v for k, v in c.state().items()} | {
        f"dhx, dcx: {k}": v for k, v in c.state().items()} | weight_copy
    return acts, [forward, _Moment("inside _cudnn_rnn_backward (weights)", live), c.optimizer_step()]


# ---------------------------------------------------------------- the public functions


#: kernel -> (its count with layers, directions or a projection, which implementation runs it)
STACKED_COUNTERS = {"autograd ops": (_stacked_ops, "scratch"), "TorchScript": (_stacked_torchscript, "scripted"),
                    "Inductor": (_stacked_inductor, "compiled"),
                    "oneDNN": (_onednn_stacked, "cudnn"), "fused, eager steps": (_stacked_fused, "fused"),
                    "fused, Inductor steps": (_stacked_fused, "fused_compiled"),
                    "fused, Triton steps": (_stacked_fused, "triton"), "cuDNN": (_cudnn_stacked, "cudnn"),
                    "ATen native": (_aten_native_stacked, "cudnn")}


class NotModelled(ValueError):
    """An implementation whose tensors the model does not count (yet)."""


def kernel_of(impl: str, device: str, dtype: str, mode: str, cpu: CpuDispatch | None = None,
              proj_size: int = 0) -> str:
    """Which kernel runs the LSTM for this cell, as aten::lstm dispatches in torch 2.13 on `cpu` (this
    machine's dispatch facts unless given: a recorded CPU's, to predict for it). oneDNN's LSTM has no
    projection: with proj_size nn.LSTM runs ATen's native kernels (measured: per-step addmm, no mkldnn_rnn_layer)."""
    device_type = torch.device(device).type
    if impl == "scratch":
        return "autograd ops"
    if impl == "scripted":
        return "TorchScript"
    if impl == "compiled":
        return "Inductor"
    if impl in FUSED_STEP_TEMPORARIES:
        return {"fused": "fused, eager steps", "fused_compiled": "fused, Inductor steps",
                "triton": "fused, Triton steps"}[impl]
    if impl != "cudnn":
        raise NotModelled(f"the memory model knows {', '.join(IMPLS)}, not {impl!r}")
    if device_type == "cuda":
        return "cuDNN"
    cpu = cpu or cpu_dispatch()
    if cpu.onednn and torch.backends.mkldnn.enabled and not proj_size:
        if dtype == "float32":
            return "oneDNN"
        if dtype == "bfloat16" and cpu.onednn_bf16:
            return "oneDNN"
        if dtype == "float16" and mode == "forward" and cpu.onednn_fp16:
            return "oneDNN"
    return "ATen native"


def path_of(kernel: str, dtype: str, mode: str, cpu: CpuDispatch | None) -> str:
    """The path a count follows, in words with the reason: which library runs the LSTM and the GEMMs in
    this dtype on this CPU (None: a CUDA device)."""
    if cpu is None:
        return f"{kernel} on CUDA"
    if dtype == "bfloat16":
        why = cpu.bf16_path()
        if kernel in ("oneDNN", "ATen native"):
            return why
        return f"{kernel}; bfloat16 GEMMs on " + (why if cpu.onednn_bf16 else "MKL: " + why.split(": ", 1)[1])
    if dtype == "float16" and kernel == "oneDNN":
        return "oneDNN float16 (inference): this CPU's oneDNN runs float16"
    if dtype == "float16" and mode == "forward" and kernel == "ATen native":
        return "ATen's native kernels: oneDNN does not run float16 here"
    return f"{kernel}, {dtype}" + (f" (oneDNN {cpu.onednn_version})" if kernel == "oneDNN" else "")


def cudnn_algorithm(hidden_size: int, dtype: str) -> str:
    """Which cuDNN RNN algorithm PyTorch picks (cudnn/RNN.cpp, PRs #62143, #73211), in words."""
    if dtype in ("float32", "float16") and hidden_size <= 128:
        algo = "PERSIST_STATIC_SMALL_H in forward and backward"
    elif dtype in ("float32", "float16") and hidden_size <= 192:
        algo = "PERSIST_STATIC_SMALL_H in forward, STANDARD in backward"
    else:
        algo = "STANDARD"
    return (f"cuDNN algorithm: {algo} (H={hidden_size}, {dtype}, sm >= 6.0); the reserve and workspace constants "
            "are for STANDARD and unmeasured for the persistent kernels")


def cublas_workspace_bytes(capability: tuple[int, int]) -> int:
    """cuBLAS's workspace per (handle, stream): 32 MiB on sm_90, else 8 MiB + 128 KiB (CUDABlas / CublasHandlePool)."""
    return 32 * MIB if capability[0] == 9 else 8 * MIB + 128 * 1024


def library_bytes_cuda(mode: str, capability: tuple[int, int]) -> int:
    """What cuBLAS keeps across steps: a workspace per handle (the forward's thread, and autograd's device
    thread in training) and cuBLASLt's 1 MiB."""
    handles = 2 if mode == "train" else 1
    return handles * cublas_workspace_bytes(capability) + MIB


def predict_sizes(impl: str, sizes: Sizes, *, device: str = "cpu", dtype: str = "float32", mode: str = "train",
                  optimizer: str = "sgd", cuda_capability: tuple[int, int] | None = None,
                  cpu: CpuDispatch | None = None, onednn: OneDNNBuffers | None = None,
                  config: dict | None = None, amp: str = "none") -> Prediction:
    """The prediction for any sizes; CUDA predictions need no GPU (capability defaults to the GPU's, else sm_90).
    A CPU prediction counts the paths `cpu` dispatches: this machine's unless given (a recorded CPU's).
    `config`: nn.LSTM's keywords beyond the chapter's LSTM (CONFIG_DEFAULTS' keys: layers, directions, ...);
    `amp`: autocast's dtype over float32 parameters (bench/instruments/memory_autocast.py), "none" without."""
    if dtype not in DTYPES or mode not in MODES or optimizer not in OPTIMIZERS:
        raise ValueError(f"dtype {dtype!r}, mode {mode!r} or optimizer {optimizer!r} is not known")
    if min(sizes.batch_size, sizes.hidden_size, sizes.seq_len, sizes.vocab_size) <= 0:
        raise ValueError(f"sizes must be positive: {sizes}")
    cuda = torch.device(device).type == "cuda"
    if not cuda and cpu is None:  # this machine: its dispatch, and oneDNN's buffers read off its oneDNN
        cpu, onednn = cpu_dispatch(), onednn or Probe()
    kernel = kernel_of(impl, device, dtype, mode, cpu, proj_size=int((config or {}).get("proj_size", 0)))
    c = _Counts(impl, sizes, dtype, mode, optimizer, cuda=cuda, flat_lstm=cuda and kernel == "cuDNN", cpu=cpu,
                onednn=onednn, config=config)
    fitted: list[str] = []
    notes: list[str] = []
    counter = {"autograd ops": _autograd_ops, "TorchScript": _torchscript, "Inductor": _inductor,
               "ATen native": _aten_native, "oneDNN": _onednn, "cuDNN": _cudnn}.get(kernel, _fused)
    if kernel == "TorchScript" and mode == "train" and sizes.seq_len < 8:
        raise NotModelled("the memory model counts scripted from T = 8 (TorchScript's unrolled 8-step bodies); below, "
                          "its remainder loop holds weight-gradient terms not counted yet")
    if c.stacked or c.proj:  # the chapter's one layer and direction is counted above; these follow the program
        if kernel not in STACKED_COUNTERS:
            counted = ", ".join(i for _, i in STACKED_COUNTERS.values())
            raise NotModelled(f"the memory model counts {counted} with layers, directions or a projection; not "
                              f"{kernel} ({impl}) yet")
        counter = STACKED_COUNTERS[kernel][0]
    if amp != "none":
        from . import memory_autocast

        if dtype != "float32":
            raise NotModelled(f"autocast runs over float32 parameters, not {dtype}")
        low = _Counts(impl, sizes, amp, mode, optimizer, cpu=cpu, onednn=onednn, config=config)
        acts, moments = memory_autocast.count(c, low, kernel, amp)
        path = f"autocast {amp} over float32 parameters; {path_of(kernel, amp, mode, cpu)}"
    else:
        acts, moments = counter(c)
        moments = c.output_gemms(moments)
        path = path_of(kernel, dtype, mode, cpu)
    compute = amp if amp != "none" else dtype  # what the LSTM and the GEMMs run in: under autocast, its dtype
    if kernel == "oneDNN" and compute == "float32":
        fitted.append("onednn_scratchpad_extra")
    elif kernel == "oneDNN" and onednn:
        notes.append(f"oneDNN's own {compute} buffers (reordered weights, GEMM buffers, scratchpad): {onednn.source}")
    elif kernel == "oneDNN":
        fitted.append("onednn_scratchpad_extra")
        notes.append(f"oneDNN's own {compute} buffers estimated with the float32 rules: not read off oneDNN for "
                     "this CPU")
    if not cuda and compute == "bfloat16" and cpu.native_bf16 and kernel != "oneDNN":
        notes.append("bfloat16 GEMMs' scratchpads " + (onednn.source if onednn else "not counted: not read off "
                                                      "oneDNN for this CPU"))
    if kernel == "Inductor" and mode == "train" and not torch.__version__.startswith(INDUCTOR_COUNTED_ON):
        notes.append(f"compiled's saved tensors were counted on torch {INDUCTOR_COUNTED_ON}; this is torch "
                     f"{torch.__version__}, whose partitioner may save others")
    if kernel == "cuDNN" and mode == "train":
        fitted.append("cudnn_reserve")
    if kernel == "cuDNN":
        fitted.append("cudnn_workspace")
        notes.append(cudnn_algorithm(sizes.hidden_size, dtype))
        if c.stacked or c.proj:
            notes.append("cuDNN with layers, directions, a projection or dropout: the reserve taken as cudnn_reserve's "
                         "(6L - 1) per direction, dropout's masks inside it and its states not counted; unmeasured")
    library = 0
    if cuda:
        if cuda_capability is None:
            cuda_capability = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else (9, 0)
        library = library_bytes_cuda(mode, cuda_capability)
        notes.append(f"CUDA: counted, not measured here; sm_{cuda_capability[0]}{cuda_capability[1]}; every "
                     "tensor rounded to 512 B; a reused cached block can charge up to ~1 MiB more")
        if kernel in ("TorchScript", "Inductor"):
            notes.append(f"{kernel} on CUDA fuses differently from the CPU; counted as on the CPU")
    peak_moment = max(moments, key=lambda m: _total(m.live, cuda))
    peak = _total(peak_moment.live, cuda) + library
    P, G, O = c.P, c.G, c.O
    A = _total(acts, cuda)
    return Prediction(
        impl=impl, device=device, dtype=dtype, mode=mode, optimizer=optimizer, batch_size=c.B, hidden_size=c.H,
        seq_len=c.T, vocab_size=c.V, kernel=kernel, path=path, param_bytes=P,
        grad_bytes=G, optimizer_bytes=O, activation_bytes=A, workspace_bytes=peak - library - P - G - O - A,
        library_bytes=library, peak_bytes=peak,
        peak_at=peak_moment.name,
        peak_live={k: n * (_round_up(e, 512) if cuda else e) for k, (n, e) in peak_moment.live.items() if n * e},
        fitted=tuple(fitted), notes=tuple(notes))


def predict(cell: Cell, optimizer: str = "sgd", *, cpu: CpuDispatch | None = None,
            onednn: OneDNNBuffers | None = None) -> Prediction:
    """The prediction for one grid cell (what the suite writes beside its measurement); `cpu`, `onednn`: as
    predict_sizes' (this machine's unless given)."""
    if cell.packed:
        raise NotModelled(f"{cell.impl}: a packed batch of sequences of their own lengths ({cell.lengths}) is not "
                          "counted")
    return predict_sizes(cell.impl, Sizes(cell.batch_size, cell.hidden_size, cell.seq_len, cell.vocab_size),
                         device=cell.device, dtype=cell.dtype, mode=cell.mode, optimizer=optimizer, config=cell.config,
                         amp=cell.amp, cpu=cpu, onednn=onednn)


def predicted_columns(cell: Cell, optimizer: str = "sgd") -> dict[str, int | None]:
    """The suite's prediction columns for a cell; empty (None) for an implementation or configuration the model does
    not count."""
    try:
        p = predict(cell, optimizer)
    except NotModelled:  # fused, triton, a module:Class implementation: nothing to predict, nothing to check
        return {"predicted_peak_bytes": None, "predicted_activation_bytes": None}
    return {"predicted_peak_bytes": p.peak_bytes, "predicted_activation_bytes": p.activation_bytes}


def per_sequence_bytes(impl: str, sizes: Sizes, **options) -> int:
    """Bytes one more sequence in the batch adds to the peak (the slope from B to B + 1)."""
    bigger = Sizes(sizes.batch_size + 1, sizes.hidden_size, sizes.seq_len, sizes.vocab_size)
    return predict_sizes(impl, bigger, **options).peak_bytes - predict_sizes(impl, sizes, **options).peak_bytes


def largest_batch(impl: str, budget_bytes: int, sizes: Sizes, **options) -> int:
    """The largest batch whose predicted peak fits in budget_bytes; 0 when not even a batch of 1 fits."""
    def fits(b: int) -> bool:
        return predict_sizes(impl, Sizes(b, sizes.hidden_size, sizes.seq_len, sizes.vocab_size),
                             **options).peak_bytes <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            return lo
    while hi - lo > 1:  # the peak grows with B: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["FITTED", "Prediction", "Sizes", "kernel_of", "largest_batch", "per_sequence_bytes", "predict",
           "predict_sizes", "predicted_columns"]
