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
- the loss's scalars: nll_loss's backward releases its total weight; the gradient backward began from (the
  loss's, or the scaled loss's) and the scaled loss go when torch.autograd.backward returns, before the step.

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
from .onednn_rnn import onednn_walk
from .ops import eager_walk
from .walk import Precision

#: what autocast's counts cover: kernel -> implementation
COUNTED = {"autograd ops": "scratch", "fused, eager steps": "fused", "fused, Inductor steps": "fused_compiled",
           "oneDNN": "cudnn"}


class _Amp:
    """The sizes of an autocast step: `c` counts the float32 model, `lo` the same cell in autocast's dtype."""

    def __init__(self, c: Counts, lo: Counts, p: Precision):
        self.c, self.lo, self.p = c, lo, p
        self.s = lo.s
        self.acts: dict[str, Term] = {}  # what autograd saved, at the end of forward (set by head)


def _scratch(a: _Amp) -> list[Moment]:
    """scratch: the chapter's cell op by op, ops.eager_walk under autocast (its casts, what it saves in which dtype,
    its weight gradients summed in autocast's dtype)."""
    a.acts, moments = eager_walk(a.c, p=a.p, lo=a.lo)
    return moments


def _fused(a: _Amp) -> list[Moment]:
    """fused and fused_compiled (eager or Inductor steps): fused.fused_walk under autocast (the sequence on casts of
    its input, state and weights, its buffers in autocast's dtype, its weight gradients cast back to float32)."""
    a.acts, moments = fused_walk(a.c, p=a.p, lo=a.lo)
    return moments


def _onednn(a: _Amp) -> list[Moment]:
    """cudnn on a CPU whose oneDNN runs bfloat16: onednn_rnn.onednn_walk under autocast (mkldnn_rnn_layer on casts
    of the input and of the four weights, its buffers in bfloat16, its weight gradients back to float32)."""
    a.acts, moments = onednn_walk(a.c, p=a.p, lo=a.lo)
    return moments


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
