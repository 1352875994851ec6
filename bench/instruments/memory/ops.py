"""The chapter's cell as ops: eager autograd (scratch), TorchScript's 8-step bodies (scripted), Inductor's partition
(compiled)."""

from __future__ import annotations

from ..onednn import Gemm
from .counts import Counts, Moment, Term
from .walk import (
    CAST,
    F32,
    NONE,
    Precision,
    Stack,
    layer_name,
    loss_and_output_layer,
    optimizer_step,
    step_start,
)


def torchscript_walk(c: Counts) -> tuple[dict[str, Term], list[Moment]]:
    """scripted: forward_stacked (Python) around the scripted loop, which keeps what the eager loop keeps.
    TorchScript's profiling executor unrolls the loop by 8 (loop_unrolling.cpp kUnrollFactor) and differentiates
    each unrolled body as one graph: in backward each layer's and direction's last body holds its 8 steps'
    weight-gradient terms (8 x its parameters) until it sums them."""
    return eager_walk(c, unrolled=True)


def inductor_walk(c: Counts) -> tuple[dict[str, Term], list[Moment]]:
    """compiled (cell scope): forward_stacked around the chapter's loop of compiled cells. Each call's forward
    graph returns what the min-cut partitioner saves, counted on torch 2.13 (INDUCTOR_COUNTED_ON): the previous h
    and c and the four gates (tanh(c) is recomputed; with proj_size the projected h too), and the last step's c;
    a step's backward graph returns its weight gradients at once, which autograd then adds into their buffers."""
    return eager_walk(c, inductor=True)


def eager_walk(c: Counts, unrolled: bool = False, inductor: bool = False, p: Precision = NONE,
               lo: Counts | None = None) -> tuple[dict[str, Term], list[Moment]]:
    """scratch: LSTMImpl.forward_stacked around the chapter's loop, op by op in eager autograd, followed
    allocation by allocation (Step); the chapter's LSTM is its one layer in one direction.

    Per layer, direction and time step the chapter's cell keeps 7 (B, H) tensors for backward (I, F, O, C~,
    c, tanh(c) and h = O * tanh(c)); with a projection h = (O * tanh(c)) W_hr is one (B, P) more. The reverse
    direction reads a flipped copy of its layer's input and flips its outputs back; a bidirectional layer
    concatenates both; dropout between layers keeps its (T, B, D * H_out) noise (input * noise): walk.Stack's
    layers and directions, `Y` holding a direction's output until the next run returns (until_run). Backward
    runs the layers top down and the reverse direction first (its nodes are the newer); a direction holds its
    gradients from its last step on, and its input's per-step gradients until unbind's backward stacks them.

    Under autocast (p; lo: the cell in its dtype; one layer in one direction, the chapter's LSTM): each gate's
    X_t @ W_x and H @ W_h run in its dtype on casts of X_t and H (saved for the weights' gradients) and of the
    weights (cached until autocast exits); the sums with the float32 biases, the gates, C, tanh(C) and h are
    float32, and so are the stacked outputs. The state is the outputs list's last h and the last C. Backward sums
    each weight's gradient terms in its cast's dtype over the steps (the biases' in float32), and the casts'
    backward makes them float32 at its end. The record holds each precision's names: `amp` picks.
    """
    T, B, H, s, u, uo, Hout = c.T, c.B, c.H, c.s, c.u, c.uo, c.H_out
    lo = lo or c

    def tb(width: int) -> int:  # one (T, B, width) tensor
        return T * B * width * s

    name = layer_name
    W_x, W_h = CAST + "W_x* (V, H), 4 gates", CAST + "W_h* (H, H), 4 gates"  # autocast's, cached

    def saved(layer: int, d: int, width: int) -> list[tuple[str, int, int]]:  # a direction's per-step saved tensors
        if p.on:  # each gate's casts of X_t and H, and 6 float32 (B, H): I, F, O, C~, C, tanh(C)
            return [("casts of X_t for the gates' matmuls (B, V)", 4 * T, B * width * p.s),
                    ("casts of H for the gates' matmuls (B, H)", 4 * T, B * H * p.s),
                    ("per-step I, F, O, C~, C, tanh(C) (float32)", 6 * T, u)]
        return [(name(layer, d, "per-step h, c, gates, tanh(c) (B, H)"), (6 if inductor else 7) * T, u),
                (name(layer, d, "per-step projected h (B, P)"), T if c.proj else 0, uo)]

    sim = step_start(c, p)
    st = Stack(sim, c, "2 H_out", until_run=True)

    def forward(layer: int, d: int, width: int) -> str:
        last_step = f"layer {layer}{' reverse' if d else ''}: the last step"
        outputs = p.named(name(layer, d, "outputs list h_1..h_T"), "outputs list h_1..h_T (float32)")
        gemm = {} if p.on else {"its GEMM's oneDNN scratchpad": (1, c.gemm_scratch(Gemm(B, width, H)))}
        if p.on:  # the weights' casts, then what each step keeps (or the last c), and every step's h
            sim.alloc(W_x, 4, width * H * p.s)
            sim.alloc(W_h, 4, H * H * p.s)
            for what, count, each in saved(layer, d, width) if c.train else [("last c", 1, u)]:
                sim.alloc(what, count, each)
            sim.alloc(outputs, T, u)
        elif c.train:  # the last step's fullest: 3 gates and a gate's two GEMM results, then all 7 saved
            for what, count, each in saved(layer, d, width):
                sim.alloc(what, count - count // T, each)
            sim.moment(last_step + "'s GEMM", {"a step's gates and GEMM results (B, H)": (5, u)} | gemm)
            for what, count, each in saved(layer, d, width):
                sim.alloc(what, count // T, each)
        else:  # no grad: the outputs list and the last c; in the step its gates, c, tanh(c), products
            sim.alloc(name(layer, d, "outputs list h_1..h_T"), T - 1, uo)
            sim.alloc(name(layer, d, "last c"), 1, u)
            sim.moment(last_step + "'s GEMM", {"a step's gates and GEMM results (B, H)": (5, u)} | gemm)
            sim.moment(last_step + ": its new c and h", {"a step's gates, c, tanh(c), h (B, H)": (7, u),
                                                         "its projected h (B, P)": (1 if c.proj else 0, uo)})
            sim.alloc(name(layer, d, "outputs list h_1..h_T"), 1, uo)
        stacked = p.named(name(layer, d, "stacked outputs (T, B, H_out)"), "stacked outputs (T, B, H) float32")
        sim.alloc(stacked, 1, tb(Hout))
        sim.moment(p.named(f"layer {layer}{' reverse' if d else ''}: torch.stack of the outputs",
                           "torch.stack of the outputs, end of the LSTM"))
        st.run_returned()
        if not c.train or p.on:  # the list is gone; h_T stays in forward_stacked's Hs
            sim.free(outputs, T - 1)
        if not d:
            return stacked
        flipped = name(layer, d, "outputs flipped back (T, B, H_out)")
        sim.alloc(flipped, 1, tb(Hout))
        st.at_next_run.append(stacked)
        return flipped

    layer_input = st.forward(forward)
    state = {f"new state {k}": v for k, v in c.state().items()}
    last_c_saved = inductor and not (c.stacked or c.proj)  # the partitioner saves the last c: the state's own
    if last_c_saved:
        state = {"new state h": (1, u)}
    if p.on:  # the state is the outputs list's last h and the last C (saved, or the last c): nothing new
        state = {}

    def let_go(layer: int, d: int) -> None:  # forward_stacked's lists, and with them each direction's h_T and c_T
        if p.on:
            return
        if c.train:
            sim.free(name(layer, d, "per-step h, c, gates, tanh(c) (B, H)"), 1 if c.proj or inductor else 2)
            sim.free(name(layer, d, "per-step projected h (B, P)"), 1)
        else:
            sim.free(name(layer, d, "outputs list h_1..h_T"))
            sim.free(name(layer, d, "last c"))

    st.returned(state, let_go)
    if p.on:  # the model returns: its float32 one-hot input and the stacked outputs go (the output layer saves
        # their casts); the cast of W_x goes when autocast exits (that of W_h is saved, in training)
        acts = loss_and_output_layer(sim, c, {"carried state h, c", "outputs list h_1..h_T (float32)"}, p,
                                     lo, False, (p.one_hot, layer_input), (W_x,) if c.train else (W_x, W_h))
        if not c.train:
            return acts, sim.moments
    elif not c.train:  # the model has returned: its one-hot input and the LSTM's outputs are gone
        sim.free(layer_input)
        sim.free("one-hot input")
        sim.alloc("logits", 1, c.TBV)
        sim.alloc("log-softmax", 1, c.TBV)
        sim.alloc("target (int64)", 1, 8 * c.TB)
        sim.moment("loss")
        return {}, sim.moments
    else:
        acts = loss_and_output_layer(sim, c, set(state))

    def backward(layer: int, d: int, width: int) -> str:
        if p.on:  # step T-1: every weight's gradient term exists, each summed in its cast's dtype, the biases'
            sim.moment("backward, step T-1: every weight's gradient term exists", {  # in float32
                "W_x*, W_h* gradients (autocast's dtype)": (1, 4 * (width + H) * H * p.s),
                "b_* gradients (float32)": (1, 4 * H * F32),
                "(B, H) gradients in flight": (4, u),
                "oneDNN GEMM scratchpad": (1, lo.gemm_scratch(Gemm(H, B, H, a_t=True)))})
            for what, _, _ in saved(layer, d, width):
                sim.free(what)
            return name(layer, d, "input gradient stacked (T, B, I)")  # none: the one-hot input needs no gradient
        if d:
            sim.alloc(name(layer, d, "dY flipped (T, B, H_out)"), 1, tb(Hout))
        sim.alloc(name(layer, d, "weight gradients"), 1, c.layer_params(layer, d))
        per_step = saved(layer, d, width)
        for what, count, _ in per_step:  # step T-1's backward is done: its 7 (+1) are freed
            sim.free(what, count // T)
        if inductor:  # and 3 more at the next step's backward, its gradients in flight included (measured:
            sim.free(per_step[0][0], 3)  # 6T - 10 (B, H) then, 6T - 8 with the new state)
        if last_c_saved:  # the last c, no longer saved, is the returned state's
            sim.alloc("new state c", 1, u)
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
        stack = name(layer, d, "input gradient stacked (T, B, I)")
        if layer:  # unbind's backward stacks the steps' input gradients
            sim.alloc(pieces, T - 1, B * width * s)
            sim.alloc(stack, 1, tb(width))
            sim.moment(f"layer {layer}{' reverse' if d else ''} backward: unbind's backward stacks its "
                       "input's gradients")
            sim.free(pieces)
        return stack

    st.backward(backward)
    if not p.on:
        return acts, [*sim.moments, optimizer_step(c)]
    for gone in ("dY (T, B, H)", W_h):  # the casts' backward runs once no step's matmul holds them: the weights'
        sim.free(gone)  # gradients to float32
    sim.alloc("LSTM gradients (float32)", 1, c.P_lstm)
    sim.moment("backward's end: the weights' gradients cast to float32", {
        "the last weight's gradient (autocast's dtype)": (1, H * H * p.s)})
    return acts, [*sim.moments, optimizer_step(c, sim.live, p)]


