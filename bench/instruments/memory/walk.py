"""The walk: a step's tensors allocation by allocation (Step), and the moments every kernel shares."""

from __future__ import annotations

from collections.abc import Callable
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

    def rename(self, name: str, new: str) -> None:
        """The same tensor under another name (the name a later account gives it)."""
        if name in self.live:
            self.live[new] = self.live.pop(name)

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

    def named(self, float32: str, autocast: str) -> str:
        """The record's name for a tensor or moment at this precision: a walk names some apart under autocast."""
        return autocast if self.on else float32

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


def loss_and_output_layer(sim: Step, c: Counts, not_saved: set[str], p: Precision = NONE, lo: Counts | None = None,
                          outputs_low: bool = True, freed: tuple[str, ...] = (), exit_frees: tuple[str, ...] = ()
                          ) -> dict[str, Term]:
    """From the LSTM's outputs to its output's gradient: the output layer's GEMM and the loss (the end of forward),
    zero_grad, the loss's backward and the output layer's, with their GEMMs' scratchpads (bfloat16 on oneDNN).
    Returns what autograd saved: what is alive at the end of forward but the model, the batch, the logits, the
    loss and `not_saved`.

    Under autocast (p): the GEMMs run in its dtype (lo: the cell in that dtype) on cached casts of W and b (and
    of the outputs, where the LSTM's are float32: not outputs_low); cross_entropy runs in float32 on a copy of
    the logits; the logits' gradient is cast back to autocast's dtype, and dY to float32 where the outputs were.
    `freed` goes when the model's forward returns, `exit_frees` when autocast exits after the loss (in inference,
    which only autocast's walks follow here, the walk ends at the loss). The record holds each precision's names,
    and in a few places each its own account: where they differ, `amp` picks."""
    lo = lo or c
    TB, H, V, s, train = c.TB, c.Y_width, c.V, lo.s, c.train  # H: the output layer's input width; s: its GEMMs'

    casts = {"the outputs (T*B, H)": 0 if outputs_low else TB * H, "the output layer's W (V, H)": V * H,
             "the output layer's b (V,)": V}
    for k, v in p.casts(casts).items() if p.on else ():
        sim.alloc(k, *v)
    logits = p.named("logits", "logits (autocast's dtype)")
    sim.alloc(logits, 1, TB * V * s)
    scratch = lo.gemm_scratch(Gemm.addmm(TB, H, V, "row", b_t=True))  # logits = addmm(b, Y, W.T)
    if scratch or p.on:
        sim.moment(p.named("the output layer's GEMM (its oneDNN scratchpad)", "the output layer's GEMM"),
                   {"oneDNN GEMM scratchpad": (1, scratch)})
    for gone in [*freed, *([] if train or outputs_low else [CAST + "the outputs (T*B, H)"])]:
        sim.free(gone)
    loss_s = F32 if p.on else c.s  # cross_entropy's dtype
    log_softmax, copy = p.named("log-softmax", "log-softmax (float32)"), "logits' float32 copy for the loss"
    sim.alloc("target (int64)", 1, 8 * TB)
    sim.alloc(copy, 1 if p.on else 0, TB * V * F32)
    sim.alloc(log_softmax, 1, TB * V * loss_s)
    losses = ("total weight, loss",) if p.on else ("total weight", "loss")
    for k in losses:
        sim.alloc(k, 2 // len(losses), loss_s)
    sim.moment(p.named("end of forward (loss computed, before zero_grad)",
                       "cross-entropy in float32 (the logits' float32 copy beside log-softmax)"))
    sim.free(copy)
    if not train:
        return {}
    for gone in [*exit_frees, CAST + "the output layer's b (V,)"]:
        sim.free(gone)
    not_saved = not_saved | set(c.model()) | set(p.kept()) | {"batch X, Y (int64)", logits, losses[-1]}
    acts = {k: v for k, v in sim.live.items() if k not in not_saved}
    sim.free("gradients")  # zero_grad
    if p.scaler:
        sim.alloc("the scaled loss", 1, F32)
    sim.alloc(p.named("loss's gradient", "the loss's gradient"), 1, loss_s)
    # nll_loss's backward: its gradient, then log-softmax's (the logits' gradient, in float32 under autocast)
    nll_grad, ls_grad = ("nll_loss's gradient (float32)", "log-softmax's gradient (float32)") if p.on else (
        "gradients of log-softmax and of the logits",) * 2
    sim.alloc(nll_grad, 1, TB * V * loss_s)
    sim.free("target (int64)")
    # NllLossBackward0 releases what it saved: the target, then the total weight (the loss stays, and so does its
    # gradient, which torch.autograd.backward holds until it returns); autocast's account names the two as one
    sim.free("total weight")
    if p.on:
        sim.free("total weight, loss", 1)
        sim.rename("total weight, loss", "loss")
    sim.alloc(ls_grad, 1, TB * V * loss_s)
    sim.moment("backward of the loss (log-softmax's gradient computed)")
    sim.free(nll_grad, 1)
    sim.free(log_softmax)
    grad_logits = "the logits' gradient (autocast's dtype)"
    if p.on:  # the copy's backward: the logits' gradient in autocast's dtype
        sim.alloc(grad_logits, 1, TB * V * s)
        sim.free(ls_grad)
    else:
        grad_logits = ls_grad
    dY = p.named(GRAD_OUT, "dY (T*B, H), autocast's dtype")
    sim.alloc(dY, 1, c.TBY if not p.on else TB * H * s)
    dy_scratch, dw_scratch = lo.gemm_scratch(Gemm(TB, V, H)), lo.gemm_scratch(Gemm(V, TB, H, a_t=True))
    live = dict(sim.live)  # the GEMMs' moments: dY = dlogits W, then dW = dlogits^T Y
    grads = "output layer's gradients"
    if not p.on:  # the float32 account: the output layer's gradients beside dY, its GEMMs' moments after
        sim.alloc(grads, 1, c.P_lin)
        sim.moment("backward of the output layer (dY computed)")
    if dy_scratch or p.on:
        sim.moments.append(Moment(p.named("backward of the output layer, dY's GEMM (its oneDNN scratchpad)",
                                          "backward of the output layer, dY's GEMM"),
                                  live | {"oneDNN GEMM scratchpad": (1, dy_scratch)}))
    if dw_scratch or p.on:
        dw = p.named("output layer's weight gradient", "the output layer's W gradient (autocast's dtype)")
        sim.moments.append(Moment(p.named("backward of the output layer, dW's GEMM (its oneDNN scratchpad)",
                                          "backward of the output layer, dW's GEMM"),
                                  live | {dw: (1, V * H * s), "oneDNN GEMM scratchpad": (1, dw_scratch)}))
    sim.free(grad_logits)
    if p.on:
        sim.free(CAST + "the outputs (T*B, H)")
        sim.free(CAST + "the output layer's W (V, H)")
        if not outputs_low:  # the outputs' cast's backward: dY back to float32
            sim.alloc("dY (T, B, H)", 1, TB * H * F32)
            sim.free(dY)
        sim.alloc("gradients of the output layer", 1, c.P_lin)
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


#: a kernel's own part of one layer's direction: (layer, direction, the layer's input width) -> a tensor's name
Direction = Callable[[int, int, int], str]


class Stack:
    """forward_stacked's layers and directions around a kernel that runs one layer's direction at a time (the
    chapter's loop of cells, the fused sequence): the reverse direction's flipped copy of its input, a
    bidirectional layer's concatenation, dropout between layers, and what the next layer or the next run lets
    go; backward top down and the reverse direction first, each layer's input gradient (flip's backward), its
    input and dropout's backward. The kernel's own part of a direction is the walk's (forward's, backward's).

    `output_saved`: in training the kernel saves a direction's own output (the fused sequence its y), which no
    layer or run lets go; `until_run`: a layer's output that dropout read is held until the next run returns
    (`run_returned`, the kernel's to call), not until the next layer starts."""

    def __init__(self, sim: Step, c: Counts, both: str, output_saved: bool = False, until_run: bool = False):
        self.sim, self.c, self.both, self.until_run = sim, c, both, until_run
        self.output_saved = output_saved and c.train
        self.inputs_of: list[str] = []  # each layer's input
        self.noise_of: dict[int, str] = {}  # the dropout noise on a layer's input
        self.saved: set[str] = set()  # the layers' outputs the kernel saves
        self.at_next_layer: list[str] = []  # held by a Python name (`inputs`, `outputs`) the next layer rebinds
        self.at_next_run: list[str] = []  # held by `Y`, rebound when the next run returns
        self.top = "one-hot input"  # the last layer's output: the LSTM's

    def run_returned(self) -> None:
        """A direction's run has returned: what `Y` held goes."""
        for gone in self.at_next_run:
            self.sim.free(gone)
        self.at_next_run = []

    def returned(self, state: dict[str, Term], let_go: Callable[[int, int], None]) -> None:
        """forward_stacked returns `state`: with layers or directions stacked into new tensors (a moment), what
        its names still held goes, and what each layer's direction lets go (`let_go(layer, d)`); with neither,
        the state is the one direction's own h_T and c_T, which outlive what it lets go."""
        sim, c = self.sim, self.c
        if c.stacked:
            for k, v in state.items():
                sim.alloc(k, *v)
            sim.moment("forward_stacked's returned state stacked")
        for gone in self.at_next_layer + self.at_next_run:
            sim.free(gone)
        for layer, d in c.layers_and_directions():
            let_go(layer, d)
        if not c.stacked:
            for k, v in state.items():
                sim.alloc(k, *v)

    def forward(self, direction: Direction) -> str:
        """Every layer and direction in the order they run, `direction` returning a direction's output; returns
        the LSTM's output."""
        sim, c = self.sim, self.c
        for layer in range(c.L):
            width = c.layer_input_size(layer)
            self.inputs_of.append(self.top)
            for gone in self.at_next_layer:
                sim.free(gone)
            self.at_next_layer, outputs = [], []
            for d in range(c.D):
                if d:
                    sim.alloc(layer_name(layer, d, "flipped input (T, B, I)"), 1, c.T * c.B * width * c.s)
                    if not c.train:
                        self.at_next_layer.append(layer_name(layer, d, "flipped input (T, B, I)"))
                outputs.append(direction(layer, d, width))
            out = outputs[0]
            if self.output_saved:
                self.saved.add(out)
            if c.D == 2:
                out = layer_name(layer, 0, f"both directions' outputs (T, B, {self.both})")
                sim.alloc(out, 1, sum(n * each for n, each in (sim.live.get(k, (0, 0)) for k in outputs)))
                sim.moment(f"layer {layer}: the directions' outputs concatenated")
                self.at_next_layer += [k for k in outputs if k not in self.saved]
            if not c.train and self.top != "one-hot input":
                self.at_next_layer.append(self.top)  # nothing saves it: gone once `inputs` is rebound
            if float(c.config["dropout"]) and layer < c.L - 1:
                hold = None if out in self.saved else self.at_next_run if self.until_run else self.at_next_layer
                out = apply_dropout(sim, c, layer, out, self.noise_of, hold)
            self.top = out
        return self.top

    def backward(self, direction: Direction) -> None:
        """Backward from the output layer's: every layer top down, the reverse direction first, `direction`
        returning the direction's input gradient, which goes into the layer input's gradient buffer (flip's
        backward, a copy, for the reverse direction; the gradient itself where there is one direction)."""
        sim, c = self.sim, self.c
        if self.top not in self.saved:
            sim.free(self.top)  # saved by the output layer
        grad_out = GRAD_OUT
        for layer in reversed(range(c.L)):
            width = c.layer_input_size(layer)
            grad_in = layer_name(layer, 0, "its input's gradient (T, B, I)")
            for d in reversed(range(c.D)):
                dx = direction(layer, d, width)
                if layer and (d or c.D == 1):
                    sim.alloc(grad_in, 1, c.T * c.B * width * c.s)
                    if d:
                        sim.moment(f"layer {layer} reverse backward: flip's backward")
                sim.free(dx)  # direction 0 of two: added in place into the input buffer
                if d:
                    sim.free(layer_name(layer, d, "flipped input (T, B, I)"))
            sim.free(grad_out)
            if self.inputs_of[layer] not in self.saved:
                sim.free(self.inputs_of[layer])  # saved by the layer's GEMMs
            grad_out = dropout_backward(sim, c, layer, grad_in, self.noise_of)


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
    else:  # torch.autograd.backward, returning, lets go of the gradient it began from (and the scaled loss)
        gone = {"the loss's gradient", "the scaled loss"}
        live = {k: v for k, v in after.items() if k not in gone} | {"clip_grad_norm_'s total norm": (1, F32)} | (
            p.unscale())
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
