"""nn.LSTM on cuDNN (aten/src/ATen/native/cudnn/RNN.cpp): flat weights, the reserve and workspace (fitted)."""

from __future__ import annotations

from .counts import Counts, Moment, Term
from .walk import optimizer_step


def cudnn_walk(c: Counts) -> tuple[dict[str, Term], list[Moment]]:
    """nn.LSTM on cuDNN: one _cudnn_rnn call for the whole stack (flat weights; the reserve kept for backward; the
    output (T, B, D * H_out), the state (L * D, B, ...)); the chapter's LSTM is one layer. One opaque call: its
    moments are inside it (forward, and backward's weights), not a walk. The reserve is FITTED's cudnn_reserve
    for L layers, (6L - 1) elements per (t, b, h), taken per direction; with dropout cuDNN's masks are assumed
    inside it, and its dropout states (cudnnDropoutGetStatesSize) are not counted. Unmeasured: counted for a GPU
    this project has not had."""
    T, B, H, I, s, L, D = c.T, c.B, c.H, c.I, c.s, c.L, c.D
    reserve = D * (6 * L - 1) * T * B * H * s  # fitted: cudnn_reserve, per direction (assumed)
    workspace = D * T * B * 4 * H * s  # fitted: cudnn_workspace, one layer's input projections per direction
    weight_copy = {"weight copy (bfloat16 is not flattened)": (1, c.P_lstm)} if c.dtype == "bfloat16" else {}
    state = {f"new state {k}": v for k, v in c.state().items()}
    base = c.model() | c.batch_and_state()
    outputs = {"one-hot input": (1, c.TBV), "outputs (T, B, D H_out)": (1, c.TBY)} | state
    if not c.train:
        return {}, [Moment("inside _cudnn_rnn (inference)", base | outputs | {"cuDNN workspace": (1, workspace)}
                            | weight_copy)]
    acts = {"one-hot input": (1, c.TBV), "outputs (T, B, D H_out)": (1, c.TBY), "cuDNN reserve": (1, reserve),
            "log-softmax": (1, c.TBV), "target (int64)": (1, 8 * c.TB), "total weight": (1, s)} | {
        f"carried state {k}": v for k, v in c.state().items()} | weight_copy
    forward = Moment("inside _cudnn_rnn (training forward)", base | outputs | {
        "cuDNN reserve": (1, reserve), "cuDNN workspace": (1, workspace)} | weight_copy)
    live = {k: v for k, v in base.items() if k != "gradients"} | state | {
        "gradients of the output layer": (1, c.P_lin), "one-hot input and logits": (2, c.TBV),
        "outputs and dY (T, B, D H_out)": (2, c.TBY), "cuDNN reserve": (1, reserve), "loss and its gradient": (2, s),
        "dx (T, B, I)": (1, T * B * I * s), "flat dw": (1, c.P_lstm), "cuDNN workspace": (1, workspace)} | {
        f"zero grad of the returned {k}": v for k, v in c.state().items()} | {
        f"dhx, dcx: {k}": v for k, v in c.state().items()} | weight_copy
    return acts, [forward, Moment("inside _cudnn_rnn_backward (weights)", live), optimizer_step(c)]


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

