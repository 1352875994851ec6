"""The fused sequence (lstm_impls/fused_cell.py): eager, Inductor and Triton steps."""

from __future__ import annotations

from ..onednn import Gemm
from .counts import Counts, Moment, Term
from .walk import (
    CAST,
    F32,
    NONE,
    Precision,
    Stack,
    inference_end,
    layer_name,
    loss_and_output_layer,
    optimizer_step,
    step_start,
)

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


def fused_walk(c: Counts, p: Precision = NONE, lo: Counts | None = None) -> tuple[dict[str, Term], list[Moment]]:
    """fused, fused_compiled and triton: forward_stacked around the fused sequence (the chapter's LSTM is one layer),
    each layer and direction counted as fused_sequence counts one (the input projection, the buffers, backward's
    factors; the gates' gradients and the weights' at the end of its backward), stacked by walk.Stack as
    eager_walk stacks the chapter's loop (flipped input and outputs, concatenation, dropout's noise); a direction's
    y is its sequence's own, saved (Stack's output_saved). Its
    backward also computes the input's gradient (T, B, I) in one GEMM, where the layer's input needs one, and
    makes a slice of a bidirectional layer's output gradient contiguous.

    Under autocast (p; lo: the cell in its dtype; one layer in one direction, fused and fused_compiled): the
    sequence runs whole in its dtype on casts of its input, state (already in that dtype after the first step) and
    weights (cached), its buffers lo's (Inductor's graph for backward's factors included), and returns its outputs
    and state in that dtype; the head runs under autocast (walk.loss_and_output_layer) and backward's weight
    gradients are cast back to float32 at its end. The record holds each precision's names: `amp` picks.
    """
    m, c = c, lo or c  # m: the model (float32 under autocast); c: the sequence, in the dtype it runs in
    T, B, H, s, u, D = c.T, c.B, c.H, c.s, c.u, c.D
    G4, H4 = T * B * 4 * H * s, 4 * H
    fwd_temps, bwd_temps = FUSED_STEP_TEMPORARIES[c.impl]
    triton = c.impl == "triton"
    scratch = c.gemm_scratch

    name = layer_name

    def kept(layer: int, d: int) -> list[tuple[str, int, int]]:  # what the sequence saves beside x, h0
        return [(name(layer, d, "outputs y (T, B, H)"), 1, c.TBH),
                (name(layer, d, "activated gates, or backward's factors (T, B, 4H)"), 1, G4)] + (
            [(name(layer, d, "every step's c (T, B, H)"), 1, c.TBH)] if triton else
            [(name(layer, d, "F and KC (T, B, H)"), 2, c.TBH)])

    sim = step_start(m, p, c.u if p.on else None)
    casts = p.casts({"W_x (V, 4H)": c.V * H4, "W_h (H, 4H)": H * H4}) if p.on else {}
    if p.on:  # the sequence's casts of its input (the one-hot's, which it saves) and of its weights (cached)
        sim.alloc("one-hot input", 1, c.TBV)
        for k, v in (casts | p.casts({"b (4H,)": H4})).items():
            sim.alloc(k, *v)
    st = Stack(sim, c, "2H", output_saved=True)

    def forward(lay: int, d: int, width: int) -> str:
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
                        "returned c": (1, u), "tanh(c), C~ * I, 1 - I, K_I (T, B, H)": (4, c.TBH)})
                sim.free(name(lay, d, "every step's c (T, B, H)"))
        else:
            sim.moment(f"layer {lay}{' reverse' if d else ''}: a time step (no grad)", {
                "input projection (T, B, 4H)": (1, G4), "one step's gates buffer (B, 4H)": (4, u),
                "a step's temporaries": (fwd_temps, u)} | step_gemm)
            sim.free(name(lay, d, "every step's c (T, B, H)"))
        sim.alloc(name(lay, d, "h_n, c_n (clones)"), 2, u)
        if not d:
            return y
        flipped = name(lay, d, "outputs flipped back (T, B, H)")
        sim.alloc(flipped, 1, c.TBH)
        if not c.train:
            sim.free(y)  # `Y` held it; nothing saves it
        return flipped

    layer_input = st.forward(forward)
    state = {f"new state {k}": v for k, v in c.state().items()}
    st.returned(state, lambda lay, d: sim.free(name(lay, d, "h_n, c_n (clones)")))
    y = p.named(layer_input, "outputs y (T, B, H)")
    if p.on:  # the sequence has returned: its outputs in autocast's dtype, the bias's cast gone; with no grad
        sim.rename(layer_input, y)  # nothing is saved and the casts go with it
        sim.free(CAST + "b (4H,)")
        for gone in [] if c.train else ["one-hot input", *casts]:
            sim.free(gone)
        acts = loss_and_output_layer(sim, m, {"carried state h, c", *state}, p, c, True,
                                     (p.one_hot,) + (() if c.train else (y,)))
        if not c.train:
            return acts, sim.moments
    elif not c.train:
        for gone in (layer_input, "one-hot input"):
            sim.free(gone)
        return {}, [*sim.moments, inference_end(c)]
    else:
        acts = loss_and_output_layer(sim, c, set(state) | set(c.batch_and_state()))
        acts["carried state h (each sequence saves its h0)"] = (1, c.L * c.D * c.uo)
    if triton:  # and its c0: the kernels read every c from c0 on
        acts["carried state c (each sequence saves its c0)"] = (1, c.L * c.D * u)
    H4H = H * H4 * s

    def backward(lay: int, d: int, width: int) -> str:
        if D == 2:  # flip's backward (reverse), or dy.contiguous() of the concatenation's slice
            sim.alloc(name(lay, d, "dY of this direction (T, B, H)"), 1, c.TBH)
        sim.alloc(name(lay, d, "gates' gradients (T, B, 4H)"), 1, G4)
        sim.alloc(name(lay, d, "dc, zero gradients of h_n, c_n"), 3, u)
        sim.moment(f"layer {lay}{' reverse' if d else ''} backward, step T-1 (the first)", {
            "a step's temporaries": (bwd_temps, u)})
        sim.moment(f"layer {lay}{' reverse' if d else ''} backward, step T-2: dh's GEMM", {
            "dh": (1, u), "oneDNN GEMM scratchpad": (1, scratch(Gemm.addmm(B, H4, H, "full", b_t=True)))})
        sim.moment(f"layer {lay}{' reverse' if d else ''} backward, W_h's gradient: h_0's term", {
            "W_h gradient: h_0's term": (1, H4H), "oneDNN GEMM scratchpad": (1, scratch(Gemm(H, B, H4, a_t=True)))})
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
        if d:  # the sequence's input, saved with the rest, before the layer input's gradient buffer is made
            sim.free(name(lay, d, "flipped input (T, B, I)"))
        return dx

    st.backward(backward)
    if not p.on:
        return acts, [*sim.moments, optimizer_step(c)]
    for gone in [name(0, 0, "weight gradients"), *casts, y, "dY (T*B, H), autocast's dtype"]:
        sim.free(gone)  # the sequence's backward is done: what it saved goes before the casts' backward runs
    sim.alloc("LSTM gradients (float32)", 1, m.P_lstm)
    sim.moment("backward's end: the weights' gradients cast to float32", {
        "every weight's gradient (autocast's dtype), the last one's cast pending": (1, m.P_lstm * s // F32)})
    return acts, [*sim.moments, optimizer_step(m, sim.live, p)]

