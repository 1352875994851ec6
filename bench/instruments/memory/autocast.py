"""The memory model under torch.autocast: float32 parameters, the compute in autocast's dtype (--amp).

What autocast adds, and where (CPU, torch 2.13; checked against the allocation timeline of one step):
- casts: autocast runs mm, addmm and mkldnn_rnn_layer in its dtype, casting each float32 operand. The
  casts of a parameter (a leaf that requires grad) are cached until the outermost autocast exits, after
  the loss; a cast that autograd saves lives on until backward is done with it. Other operands are cast
  at each call (the chapter's loop casts X_t and H for each gate's matmul, and those casts are saved).
- cross_entropy runs in float32: the logits (autocast's dtype) are copied to float32, and log-softmax,
  its gradients and the loss are float32.
- gradients: a parameter's gradient reaches its cast in autocast's dtype, summed there over the time
  steps, and becomes float32 at the cast's backward (ToCopyBackward), one parameter at a time.
- the fused sequence casts its input, state and weights itself on entry (lstm_impls/fused_cell.lstm)
  and returns its outputs and state in autocast's dtype, so the carried state is in that dtype too.
- float16's GradScaler: its scale and growth tracker (kept between steps), the scaled loss and its
  gradient, unscale_'s inverse scale and found-inf flag.

Counted for the chapter's LSTM (one layer, one direction, a padded batch) on a CPU: scratch (autograd
ops), fused and fused_compiled (the fused sequence, eager or Inductor steps), and cudnn where nn.LSTM runs
oneDNN in bfloat16. Not counted: scripted and compiled, whose autocast graphs cast and save otherwise (measured
at B32 H256 T35: 33.0 and 25.6 MiB against scratch's 14.2). Each count follows the
program allocation by allocation (walk.Step): the chapter's ops are ops.eager_walk's under a walk.Precision
(its casts, the dtypes it saves in, its weight gradients summed in autocast's dtype); the fused sequence's and
oneDNN's buffers are the low-precision walks' (fused.fused_walk, onednn_rnn.onednn_walk, one layer in one
direction), with the casts autocast adds around them; the model's are float32.
"""

from __future__ import annotations

from .counts import Counts, Moment, NotModelled, Term
from .fused import fused_walk
from .onednn_rnn import onednn_walk, onednn_workspace_bytes
from .ops import eager_walk
from .walk import CAST, F32, Precision, Step, loss_and_output_layer, optimizer_step, step_start

#: what autocast's counts cover: kernel -> implementation
COUNTED = {"autograd ops": "scratch", "fused, eager steps": "fused", "fused, Inductor steps": "fused_compiled",
           "oneDNN": "cudnn"}


class _Amp:
    """The sizes of an autocast step: `c` counts the float32 model, `lo` the same cell in autocast's dtype."""

    def __init__(self, c: Counts, lo: Counts, p: Precision):
        self.c, self.lo, self.p = c, lo, p
        self.s = lo.s
        self.acts: dict[str, Term] = {}  # what autograd saved, at the end of forward (set by head)

    def head(self, sim: Step, outputs_low: bool, freed: list[str], exit_frees: list[str], state: str) -> None:
        """The output layer and the loss, and their backward (walk.loss_and_output_layer under autocast); `state`:
        the name the walk gives the returned state, which autograd does not save."""
        self.acts = loss_and_output_layer(sim, self.c, {"carried state h, c", state}, self.p, self.lo, outputs_low,
                                          tuple(freed), tuple(exit_frees))

    def optimizer(self, sim: Step) -> Moment:
        """clip_grad_norm_ and the update (float32 parameters) after the walk's backward (walk.optimizer_step)."""
        return optimizer_step(self.c, sim.live, self.p)


def _scratch(a: _Amp) -> list[Moment]:
    """scratch: the chapter's cell op by op, ops.eager_walk under autocast (its casts, what it saves in which dtype,
    its weight gradients summed in autocast's dtype)."""
    a.acts, moments = eager_walk(a.c, p=a.p, lo=a.lo)
    return moments


def _low_moments(moments: list[Moment], prefixes: tuple[str, ...], extra: dict[str, Term]) -> list[Moment]:
    """A low-precision count's moments whose names start with one of prefixes, with what autocast adds then."""
    return [Moment(m.name, m.live | extra) for m in moments if m.name.startswith(prefixes)]


def _fused(a: _Amp) -> list[Moment]:
    """fused and fused_compiled (eager or Inductor steps): the sequence runs whole in autocast's dtype on casts of
    its input, state (already in that dtype after the first step) and weights, its buffers fused.fused_walk's
    in that dtype (Inductor's graph for backward's factors included); backward's weight gradients are cast back
    to float32 at its end."""
    c, lo, s = a.c, a.lo, a.s
    H, V = c.H, c.V
    H4, train = 4 * H, c.train
    casts = a.p.casts({"W_x (V, 4H)": V * H4, "W_h (H, 4H)": H * H4})
    b_cast = a.p.casts({"b (4H,)": H4})
    acts, inner = fused_walk(lo)  # its "one-hot input" is autocast's cast of it
    forward = ("layer 0: the input projection", "layer 0: a time step", "layer 0: backward's factors")
    moments = _low_moments(inner, forward, {"one-hot input (float32)": (1, c.TBV)} | casts | b_cast | a.p.kept())
    sim = step_start(c, a.p, lo.u)
    sim.alloc("one-hot input", 1, lo.TBV)
    for k, v in (casts | b_cast).items():
        sim.alloc(k, *v)
    sim.alloc("outputs y (T, B, H)", 1, lo.TBH)
    saved = [k for k in acts if k.startswith("layer 0: ") and "outputs y" not in k]  # backward's factors
    for k in saved:
        sim.alloc(k, *acts[k])
    sim.alloc("new state h, c", 2, lo.u)
    sim.free(CAST + "b (4H,)")
    if not train:  # nothing saved: the casts go when the sequence returns
        for k in ["one-hot input", *casts]:
            sim.free(k)
    a.head(sim, True, ["one-hot input (float32)"] + ([] if train else ["outputs y (T, B, H)"]), [], "new state h, c")
    moments += sim.moments
    if not train:
        return moments
    moments += _low_moments(inner, ("layer 0 backward",), casts | a.p.kept())
    for k in [*saved, *casts, "one-hot input", "outputs y (T, B, H)", "dY (T*B, H), autocast's dtype"]:
        sim.free(k)  # the sequence's backward is done: what it saved goes before the casts' backward runs
    sim.alloc("LSTM gradients (float32)", 1, c.P_lstm)
    moments.append(Moment("backward's end: the weights' gradients cast to float32", sim.live | {
        "every weight's gradient (autocast's dtype), the last one's cast pending": (1, c.P_lstm * s // F32)}))
    return moments + [a.optimizer(sim)]


def _onednn(a: _Amp) -> list[Moment]:
    """cudnn on a CPU whose oneDNN runs bfloat16: nn.LSTM's mkldnn_rnn_layer in bfloat16 on casts of the input and
    of the four weights (all saved), its buffers onednn_rnn.onednn_walk's; backward's float32 weight
    gradients pass through the casts' dtype on their way back to float32."""
    c, lo, s = a.c, a.lo, a.s
    H, V = c.H, c.V
    H4, train = 4 * H, c.train
    casts = a.p.casts({"weight_ih (4H, V)": V * H4, "weight_hh (4H, H)": H * H4, "bias_ih, bias_hh (4H,)": 2 * H4})
    _, inner = onednn_walk(lo)  # its "one-hot input" is autocast's cast of it
    moments = _low_moments(inner, ("inside mkldnn_rnn_layer (",), {"one-hot input (float32)": (1, c.TBV)} | casts
                           | a.p.kept())
    sim = step_start(c, a.p, lo.u)
    sim.alloc("one-hot input", 1, lo.TBV)
    for k, v in casts.items():
        sim.alloc(k, *v)
    sim.alloc("outputs (T, B, H)", 1, lo.TBH)
    sim.alloc("h_n, c_n (layer outputs)", 2, lo.u)
    sim.alloc("returned state h, c", 2, lo.u)
    if train:
        sim.alloc("oneDNN workspace", 1, onednn_workspace_bytes(lo))
        sim.alloc("bias sum", 1, H4 * s)
    else:
        for k in ["one-hot input", "h_n, c_n (layer outputs)"]:
            sim.free(k)
    a.head(sim, True, ["one-hot input (float32)"] + ([] if train else ["outputs (T, B, H)"]), [] if train else [*casts],
           "returned state h, c")
    moments += sim.moments
    if not train:
        return moments
    moments += _low_moments(inner, ("inside mkldnn_rnn_layer_backward",), casts | a.p.kept())
    for k in ["one-hot input", "outputs (T, B, H)", "h_n, c_n (layer outputs)", "oneDNN workspace", "bias sum",
              "dY (T*B, H), autocast's dtype", *casts]:
        sim.free(k)  # mkldnn_rnn_layer's backward is done: what it saved goes before the casts' backward runs
    sim.alloc("LSTM gradients (float32, from oneDNN)", 1, c.P_lstm)
    moments.append(Moment("backward's end: the weights' gradients through the casts' dtype to float32", sim.live | {
        "the largest weight's gradient in the casts' dtype, and in float32 again": (1, max(V, H) * H4 * (s + F32))}))
    return moments + [a.optimizer(sim)]


COUNTERS = {"autograd ops": _scratch, "fused, eager steps": _fused, "fused, Inductor steps": _fused,
            "oneDNN": _onednn}


def count(c: Counts, lo: Counts, kernel: str, amp: str) -> tuple[dict[str, Term], list[Moment]]:
    """What an autocast step saves for backward, and its moments: c the cell in float32 (the parameters' dtype),
    lo the same cell in autocast's dtype."""
    if kernel not in COUNTERS or c.cuda or c.stacked or c.proj or c.config["dropout"]:
        raise NotModelled(f"autocast is counted for {', '.join(COUNTED.values())} with one layer and direction on "
                             f"a CPU; not {c.impl} ({kernel}{', CUDA' if c.cuda else ''}"
                             f"{', layers, directions, a projection or dropout' if c.stacked or c.proj else ''})")
    if kernel == "oneDNN" and not (amp == "bfloat16" and lo.onednn and c.cpu and c.cpu.onednn_bf16):
        raise NotModelled(f"autocast {amp} with nn.LSTM is counted where oneDNN runs bfloat16 and its buffers are "
                             "read off it")
    for k in ("P", "G", "O", "P_lin"):  # the model is float32
        setattr(lo, k, getattr(c, k))
    a = _Amp(c, lo, Precision(amp, lo.s, scaler=amp == "float16" and c.train))
    moments = COUNTERS[kernel](a)
    return a.acts, moments
