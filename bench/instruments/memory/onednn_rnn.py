"""nn.LSTM on oneDNN (mkldnn_rnn_layer): its workspace from oneDNN's layout rules, its bfloat16 buffers read off it."""

from __future__ import annotations

import copy

from .counts import Counts, Moment, Term, good_ld, page, round_up
from .walk import (
    F32,
    GRAD_OUT,
    NONE,
    Precision,
    apply_dropout,
    dropout_backward,
    inference_end,
    layer_name,
    loss_and_output_layer,
    optimizer_step,
    step_start,
)


def onednn_workspace_bytes(c: Counts) -> int:
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
    return sum(page(r) for r in regions)


def onednn_walk(c: Counts, p: Precision = NONE, lo: Counts | None = None) -> tuple[dict[str, Term], list[Moment]]:
    """nn.LSTM through oneDNN (aten mkldnn_rnn_layer; the chapter's LSTM is one layer): one call per layer and
    direction (the reverse one reads its input backwards, no copy), each with the workspace from oneDNN's layout
    rules (onednn_workspace_bytes), reordered weights and scratchpad of a one-layer LSTM whose input is that layer's;
    a bidirectional layer concatenates both outputs, dropout between layers keeps its noise. Backward runs
    the layers top down, reverse direction first, each in mkldnn_rnn_layer_backward as in one layer.

    Under autocast (p; lo: the cell in its dtype, where oneDNN runs bfloat16; one layer in one direction):
    mkldnn_rnn_layer runs in its dtype on casts of the input and of the four weights (all saved), its buffers
    lo's; the head runs under autocast (walk.loss_and_output_layer); backward's float32 weight gradients pass
    through the casts' dtype on their way back to float32. The record holds each precision's names."""
    m, c = c, lo or c  # m: the model (float32 under autocast); c: the LSTM, in the dtype it runs in
    T, B, H, s, u, L, D = c.T, c.B, c.H, c.s, c.u, c.L, c.D
    f32 = 4
    # bfloat16: oneDNN's own buffers read off oneDNN per layer's shape, as onednn_bf16 reads them; where they are not
    # (a CPU given without them), estimated with the float32 rules (the prediction says so)
    low = s != f32 and c.onednn is not None
    own = "oneDNN's own buffers (reordered weights, GEMM buffers, scratchpad)"
    p_drop = float(c.config["dropout"])

    def layer(n_in: int) -> Counts:  # a one-layer count whose input is this layer's
        one = copy.copy(c)
        one.I = n_in
        return one

    name = layer_name

    def reorders(n_in: int) -> dict[str, Term]:  # the weights as mkldnn_rnn_layer reorders them for forward
        return {"weights reordered (ldigo)": (1, (n_in + H) * good_ld(4 * H, s) * s)}

    sim = step_start(m, p, u if p.on else None)
    casts = p.casts({"weight_ih (4H, V)": c.V * 4 * H, "weight_hh (4H, H)": H * 4 * H,
                     "bias_ih, bias_hh (4H,)": 2 * 4 * H}) if p.on else {}
    if p.on:  # autocast's casts of the input (the one-hot's) and of the four weights, all saved
        sim.alloc("one-hot input", 1, c.TBV)
        for k, v in casts.items():
            sim.alloc(k, *v)
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
                sim.alloc(name(lay, d, "oneDNN workspace"), 1, onednn_workspace_bytes(one))
                sim.alloc(name(lay, d, "h_n, c_n (layer outputs)"), 2, u)
                scratch = page(T * B * good_ld(4 * H, f32) * f32) + 2 * page(B * good_ld(H, f32) * f32) + 4664
                sim.moment(f"inside mkldnn_rnn_layer (layer {lay}{' reverse' if d else ''}, training)", {
                    "bias sum": (1, 4 * H * s), own: (1, c.onednn.rnn_bytes("forward", T, B, H, n_in, c.dtype))}
                    if low else reorders(n_in) | {"oneDNN scratchpad": (1, scratch)})
            else:  # inference: brgemm kernels, weights reordered to ldgOi16o, the states in the scratchpad
                sim.alloc(name(lay, d, "outputs (T, B, H)"), 1, c.TBH)
                sim.alloc(name(lay, d, "h_n, c_n (layer outputs)"), 2, u)
                scratch = (page(2 * (T + 1) * B * good_ld(max(n_in, H), s) * s) + page(2 * (T + 1) * B * H * f32)
                           + page(B * good_ld(4 * H, f32) * f32) + page(B * good_ld(H, s) * s) + 4952)
                sim.moment(f"inside mkldnn_rnn_layer (layer {lay}{' reverse' if d else ''}, inference)", {
                    "bias sum": (1, 4 * H * s), own: (1, c.onednn.rnn_bytes("inference", T, B, H, n_in, c.dtype))}
                    if low else {"bias sum": (1, 4 * H * s), "oneDNN scratchpad": (1, scratch),
                                 "weights reordered (ldgOi16o)": (1, 4 * round_up(H, 16) * (n_in + H) * s)})
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
            out = apply_dropout(sim, c, lay, out, noise_of, held if not c.train else None)
        if not c.train and layer_input != "one-hot input":
            sim.free(layer_input)  # nothing saves it
        for gone in held_before:
            sim.free(gone)
        held_before, held = held, []
        layer_input = out
    if p.on:  # one layer's outputs, as autocast's count names them; its bias sum, saved in training
        for what in ("outputs (T, B, H)", "oneDNN workspace", "h_n, c_n (layer outputs)"):
            sim.rename(name(0, 0, what), what)
        sim.alloc("bias sum", 1 if c.train else 0, 4 * H * s)
        layer_input = "outputs (T, B, H)"
    state = {("returned state " if p.on else "new state ") + k: v for k, v in c.state().items()}
    for k, v in state.items():
        sim.alloc(k, *v)
    if not p.on:
        sim.moment("the returned state stacked")
    top = layer_input
    if p.on:
        for gone in [] if c.train else ["one-hot input", "h_n, c_n (layer outputs)"]:
            sim.free(gone)
        acts = loss_and_output_layer(sim, m, {"carried state h, c", *state}, p, c, True,
                                     (p.one_hot,) + (() if c.train else (top,)), () if c.train else tuple(casts))
        if not c.train:
            return acts, sim.moments
    elif not c.train:  # then the output layer (inference_gemm) and the loss, as in one layer
        for lay, d in c.layers_and_directions():
            sim.free(name(lay, d, "h_n, c_n (layer outputs)"))
        for gone in [top, "one-hot input", *held_before]:
            sim.free(gone)
        return {}, [*sim.moments, inference_end(c)]
    else:
        acts = loss_and_output_layer(sim, c, set(state))
    grad_out = GRAD_OUT
    if D == 2:
        sim.free(top)
    for lay in reversed(range(L)):
        n_in = c.layer_input_size(lay)
        grad_in = name(lay, 0, "its input's gradient (T, B, I)")
        for d in reversed(range(D)):
            one = layer(n_in)
            scratch = page(T * B * good_ld(4 * H, f32) * f32) + 2 * page(B * good_ld(H, f32) * f32) + 4664
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
        grad_out = dropout_backward(sim, c, lay, grad_in, noise_of)
    if not p.on:
        return acts, [*sim.moments, optimizer_step(c)]
    for gone in [name(0, 0, "weight gradients"), "outputs (T, B, H)", "h_n, c_n (layer outputs)", "oneDNN workspace",
                 "bias sum", "dY (T*B, H), autocast's dtype", *casts]:
        sim.free(gone)  # mkldnn_rnn_layer's backward is done: what it saved goes before the casts' backward runs
    sim.alloc("LSTM gradients (float32, from oneDNN)", 1, m.P_lstm)
    sim.moment("backward's end: the weights' gradients through the casts' dtype to float32", {
        "the largest weight's gradient in the casts' dtype, and in float32 again":
            (1, max(c.V, H) * 4 * H * (s + F32))})
    return acts, [*sim.moments, optimizer_step(m, sim.live, p)]


