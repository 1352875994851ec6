"""nn.LSTM on ATen's native CPU kernels (aten/src/ATen/native/RNN.cpp)."""

from __future__ import annotations

from .counts import Counts, Moment, Term
from .walk import (
    GRAD_OUT,
    apply_dropout,
    dropout_backward,
    inference_end,
    layer_name,
    loss_and_output_layer,
    optimizer_step,
    step_start,
)


def native_walk(c: Counts) -> tuple[dict[str, Term], list[Moment]]:
    """nn.LSTM on ATen's native CPU kernels (RNN.cpp's layer stack; the chapter's LSTM is one layer): per layer
    and direction the input projection of all steps at once (T, B, 4H), then per step gates = linear_hh(h) + that
    (B, 4H), in-place sigmoid/tanh on its chunks, c, tanh(c), h (with a projection h W_hr, (B, P)), each step's
    gates kept; the reverse direction walks the
    steps backwards (no copy); the outputs stacked, a bidirectional layer's concatenated; dropout between
    layers. Backward per layer and direction: each step swaps its gates for their gradients,
    which the input projection's backward stacks at the end."""
    T, B, H, s, u, uo, Hout, L, D = c.T, c.B, c.H, c.s, c.u, c.uo, c.H_out, c.L, c.D
    B4H, H4 = B * 4 * H * s, 4 * H
    p_drop = float(c.config["dropout"])

    name = layer_name

    def saved(layer: int, d: int) -> list[tuple[str, int, int]]:
        return [(name(layer, d, "per-step gates (B, 4H)"), T, B4H), (name(layer, d, "per-step c, tanh(c), h (B, H)"),
                3 * T, u), (name(layer, d, "per-step projected h (B, P)"), T if c.proj else 0, uo)]

    sim = step_start(c)
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
            out = apply_dropout(sim, c, lay, out, noise_of, undropped)
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
        return {}, [*sim.moments, inference_end(c)]
    top = layer_input
    acts = loss_and_output_layer(sim, c, set(state))
    grad_out = GRAD_OUT
    sim.free(top)
    H4H = Hout * H4 * s
    for lay in reversed(range(L)):
        width = c.layer_input_size(lay)
        grad_in = name(lay, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            sim.alloc(name(lay, d, "W_hh and b_hh gradients"), 1, H4H + H4 * s + H * c.proj * s)
            gates, hcs = saved(lay, d)[:2]
            sim.free(hcs[0], 4)  # step T-1's backward is done (3T - 4 with the new state)
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
        grad_out = dropout_backward(sim, c, lay, grad_in, noise_of)
    return acts, [*sim.moments, optimizer_step(c)]

