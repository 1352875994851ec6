"""The walk: a step's tensors allocation by allocation (Step), and the moments every kernel shares."""

from __future__ import annotations

from dataclasses import dataclass

from ..onednn import Gemm
from .counts import Counts, Moment, Term

F32 = 4
CAST = "autocast's cast of "  # the prefix of every autocast cast's name


class Step:
    """A step's tensors as the code allocates and frees them, in order, with a snapshot at each moment that
    can be the peak."""

    def __init__(self, live: dict[str, Term]):
        self.live = {k: v for k, v in live.items() if v[0] * v[1]}
        self.moments: list[Moment] = []

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
        self.moments.append(Moment(name, self.live | {k: v for k, v in (transient or {}).items() if v[0] * v[1]}))


#: the walks' name for the gradient a layer's output receives (the top layer's: the output layer's dY)
GRAD_OUT = "dY (T, B, D H_out): the layer's output's gradient"


@dataclass(frozen=True)
class Precision:
    """Autocast as a property of the walk: the dtype GEMMs compute in (`s` bytes an element) over float32
    parameters, which casts it caches, the float16 GradScaler's scalars. `NONE`: no autocast, the cell's dtype."""

    amp: str = "none"  # autocast's dtype, "none" without autocast
    s: int = F32  # bytes of an element of a GEMM's result under autocast
    scaler: bool = False  # float16's GradScaler in training

    @property
    def on(self) -> bool:
        return self.amp != "none"

    @property
    def one_hot(self) -> str:
        """The one-hot input's name: under autocast it stays float32 (the model makes it), cast at its GEMM."""
        return "one-hot input (float32)" if self.on else "one-hot input"

    def casts(self, elements: dict[str, int]) -> dict[str, Term]:
        """Autocast's cached casts of the parameters named (elements each), in its dtype."""
        return {CAST + k: (1, n * self.s) for k, n in elements.items()}

    def kept(self) -> dict[str, Term]:
        """What the scaler keeps between steps (nothing without one)."""
        return {"GradScaler's scale and growth tracker": (2, F32)} if self.scaler else {}

    def unscale(self) -> dict[str, Term]:
        """The scaler's unscale_ scalars at the optimizer step."""
        return {"unscale_'s inverse scale and found-inf flag": (2, F32)} if self.scaler else {}


NONE = Precision()


def step_start(c: Counts, p: Precision = NONE, state_each: int | None = None) -> Step:
    """A step's tensors up to the one-hot input: the model, the batch, the carried state (h, c of `state_each`
    bytes each where given: under autocast the kernel's dtype), the scaler's scalars, the one-hot cast."""
    state = c.batch_and_state() if state_each is None else {
        "batch X, Y (int64)": (2, 8 * c.TB), "carried state h, c": (2, state_each)}
    sim = Step(c.model() | state | p.kept())
    sim.alloc("one-hot int64", 1, 8 * c.TB * c.V)
    sim.alloc(p.one_hot, 1, c.TBV)
    sim.moment("one-hot cast (int64 and float copies)")
    sim.free("one-hot int64")
    return sim


def loss_and_output_layer(sim: Step, c: Counts, not_saved: set[str]) -> dict[str, Term]:
    """From the LSTM's outputs to its output's gradient (GRAD_OUT): the output layer's GEMM and the loss (the end
    of forward), zero_grad, the loss's backward and the output layer's (its GEMMs where they have a scratchpad:
    bfloat16 on oneDNN). Returns what autograd saved: what is alive at the end of forward but the model, the
    batch, the logits, the loss and `not_saved`."""
    TB, H, V = c.TB, c.Y_width, c.V  # H: the output layer's input width
    sim.alloc("logits", 1, c.TBV)
    scratch = c.gemm_scratch(Gemm.addmm(TB, H, V, "row", b_t=True))  # logits = addmm(b, Y, W.T)
    if scratch:
        sim.moment("the output layer's GEMM (its oneDNN scratchpad)", {"oneDNN GEMM scratchpad": (1, scratch)})
    for k, each in (("log-softmax", c.TBV), ("target (int64)", 8 * c.TB), ("total weight", c.s), ("loss", c.s)):
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
    live = {k: v for k, v in sim.live.items() if k != "output layer's gradients"}  # its GEMMs: dY, then dW
    dy_scratch, dw_scratch = c.gemm_scratch(Gemm(TB, V, H)), c.gemm_scratch(Gemm(V, TB, H, a_t=True))
    if dy_scratch:
        sim.moments.append(Moment("backward of the output layer, dY's GEMM (its oneDNN scratchpad)", live | {
            "oneDNN GEMM scratchpad": (1, dy_scratch)}))
    if dw_scratch:
        sim.moments.append(Moment("backward of the output layer, dW's GEMM (its oneDNN scratchpad)", live | {
            "output layer's weight gradient": (1, V * H * c.s), "oneDNN GEMM scratchpad": (1, dw_scratch)}))
    sim.free("gradients of log-softmax and of the logits")
    return acts


def layer_name(layer: int, d: int, what: str) -> str:
    """A stacked count's name for one layer's and direction's tensor."""
    return f"layer {layer}{' reverse' if d else ''}: {what}"


def dropout_backward(sim: Step, c: Counts, layer: int, grad_in: str, noise_of: dict[int, str]) -> str:
    """Dropout's backward on the gradient of `layer`'s input (the gradient times the noise, which goes); returns
    the name of the gradient the layer below receives: grad_in itself where no dropout came before the layer."""
    if layer not in noise_of:
        return grad_in
    grad = layer_name(layer - 1, 0, "dropout's backward (T, B, D H_out)")
    sim.alloc(grad, 1, c.T * c.B * c.Y_width * c.s)
    sim.moment(f"layer {layer - 1}: dropout's backward")
    sim.free(grad_in)
    sim.free(noise_of[layer])
    return grad


def apply_dropout(sim: Step, c: Counts, layer: int, out: str, noise_of: dict[int, str], hold: list[str] | None) -> str:
    """F.dropout on a layer's output `out` (training mode: the suite never calls eval), input * noise: the noise
    is kept for backward (noise_of[layer + 1]) unless no grad; a concatenation goes at once, a one-direction
    output when `hold` is let go (None: it stays, saved). Returns the dropped output's name."""
    size = c.T * c.B * c.Y_width * c.s
    noise, dropped = layer_name(layer, 0, "dropout noise"), layer_name(layer, 0, "outputs after dropout")
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


def inference_end(c: Counts) -> Moment:
    """Inference after the LSTM: the loss, beside the new state, the logits and log-softmax."""
    return Moment("loss", c.model() | c.batch_and_state() | {
        "new state h, c": (2, c.u), "logits": (1, c.TBV), "log-softmax": (1, c.TBV), "target (int64)": (1, 8 * c.TB)})


def inference_gemm(c: Counts) -> Moment:
    """Inference's output-layer GEMM: the logits beside the LSTM's input and outputs, and its scratchpad."""
    scratch = c.gemm_scratch(Gemm.addmm(c.TB, c.Y_width, c.V, "row", b_t=True))  # logits = addmm(b, Y, W.T)
    return Moment("the output layer's GEMM (logits beside the LSTM's input and outputs)", c.model()
                  | c.batch_and_state() | {"one-hot input": (1, c.TBV), "outputs (T, B, H)": (1, c.TBY)}
                  | {f"new state {k}": v for k, v in c.state().items()}
                  | {"logits": (1, c.TBV), "oneDNN GEMM scratchpad": (1, scratch)})


def optimizer_step(c: Counts, after: dict[str, Term] | None = None, p: Precision = NONE) -> Moment:
    """After backward: model, batch, both states, logits, loss (`after`: what the walk left alive, where it
    followed backward to its end), clip_grad_norm_'s norm, the scaler's unscale_ scalars; Adam's temporaries."""
    if after is None:
        live = c.model() | c.batch_and_state() | {f"new state {k}": v for k, v in c.state().items()} | {
            "logits": (1, c.TBV), "loss, clip_grad_norm_'s total norm": (2, c.s)}
    else:
        live = after | {"clip_grad_norm_'s total norm": (1, F32)} | p.unscale()
    if c.optimizer == "adam" and c.cuda:  # foreach (the default on CUDA): a sqrt list of every parameter
        live["Adam's sqrt(exp_avg_sq) list (foreach)"] = (1, c.P)
    elif c.optimizer == "adam":
        # single-tensor Adam (foreach is not the default on a CPU): for each parameter in order,
        # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps) holds sqrt and the quotient at
        # once, while the previous parameter's denom is still bound; and an 8-byte scalar
        sizes = c.params
        temps = max(2 * p + (sizes[i - 1] if i else 0) for i, p in enumerate(sizes))
        live["Adam's denom: sqrt, quotient, the previous denom"] = (1, temps)
        live["Adam's scalar"] = (1, 8)
    return Moment("optimizer step", live)
