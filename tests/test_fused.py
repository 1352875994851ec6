"""The ladder past scratch: `fused` does what it says, `fused_compiled` runs its cell in Inductor (and with
CUDA graphs on a GPU), `triton`'s kernels match nn.LSTM under Triton's interpreter on this CPU.

Equality with nn.LSTM on the tiny shape is tests/test_impls.py's, for these as for every implementation.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstm_impls
from bench.instruments.what_ran import what_ran
from lstm_impls import fused_cell

ATOL = 1e-5  # as tests/test_impls.py
ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU-only torch or no GPU)")


def lstm_layout(I: int, H: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * H**-0.5 for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]


def test_fused_runs_one_input_gemm_with_the_bias_then_one_gemm_per_step(tiny):
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    impl = lstm_impls.create("fused", I, H)
    impl.load_lstm_weights(*lstm_layout(I, H))
    x = torch.randn(T, B, I)
    with torch.profiler.profile(record_shapes=True) as prof:
        impl(x)
    gemms = [(e.name, e.input_shapes[:3]) for e in prof.events() if e.name in ("aten::addmm", "aten::mm")]
    assert gemms == [("aten::addmm", [[4 * H], [T * B, I], [I, 4 * H]])] + \
        [("aten::addmm", [[B, 4 * H], [B, H], [H, 4 * H]])] * T


def test_fused_sequence_gradients_pass_gradcheck_in_float64(tiny):
    """The written-out backward (fused_cell.LSTMFunction) against finite differences, for every input."""
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    g = torch.Generator().manual_seed(3)
    shapes = [(T, B, I), (B, H), (B, H), (I, 4 * H), (H, 4 * H), (4 * H,)]
    inputs = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]

    def run(x, h0, c0, W_x, W_h, b):
        return fused_cell.lstm(x, h0, c0, [W_x, W_h, b], fused_cell.TorchSteps())

    assert torch.autograd.gradcheck(run, inputs)


def test_fused_backward_computes_each_weight_gradient_in_one_gemm_over_all_steps(tiny):
    """Backward: one (B, 4H) x (4H, H) GEMM per step but the first for the state's gradient; the weights'
    gradients over all T steps at once: W_h's (h_0's term, then the other T-1 steps), W_x's."""
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    impl = lstm_impls.create("fused", I, H)
    y, (h, c) = impl(torch.randn(T, B, I))
    with torch.profiler.profile(record_shapes=True) as prof:
        (y.sum() + c.sum()).backward()
    gemms = [(e.name, e.input_shapes[:3]) for e in prof.events() if e.name in ("aten::addmm", "aten::mm")]
    assert gemms == [("aten::addmm", [[B, H], [B, 4 * H], [4 * H, H]])] * (T - 1) + [
        ("aten::mm", [[H, B], [B, 4 * H]]), ("aten::addmm", [[H, 4 * H], [H, (T - 1) * B], [(T - 1) * B, 4 * H]]),
        ("aten::mm", [[I, T * B], [T * B, 4 * H]])]


def test_fused_inference_keeps_no_gates(tiny):
    """Without autograd the loop runs outside the autograd.Function and keeps one step's gates, not T's."""
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    impl = lstm_impls.create("fused", I, H)
    x = torch.randn(T, B, I)
    with torch.profiler.profile() as prof, torch.no_grad():
        y, (h, c) = impl(x)
    assert "LSTMFunction" not in {e.name for e in prof.events()}  # its memory: tests/test_memory_model.py
    y_grad, (h_grad, c_grad) = impl(x)
    assert torch.equal(y, y_grad) and torch.equal(h, h_grad) and torch.equal(c, c_grad)


def test_fused_weights_are_nn_lstms_concatenated_and_transposed(tiny):
    I, H = tiny["input_size"], tiny["hidden_size"]
    weight_ih, weight_hh, bias_ih, bias_hh = lstm_layout(I, H)
    impl = lstm_impls.create("fused", I, H)
    impl.load_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    assert impl.W_x.shape == (I, 4 * H) and impl.W_h.shape == (H, 4 * H) and impl.b.shape == (4 * H,)
    torch.testing.assert_close(impl.W_h[:, H:2 * H], weight_hh[H:2 * H].T)  # the forget gate's columns
    torch.testing.assert_close(impl.b, bias_ih + bias_hh)


def test_fused_compiled_runs_an_inductor_graph_per_step_and_one_for_backwards_factors(tiny):
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    impl = lstm_impls.create("fused_compiled", I, H)
    x = torch.randn(T, B, I)
    impl(x)[0].sum().backward()  # compiles (the one shape every test uses: cached for the others)
    assert what_ran(lambda: impl(x), torch.device("cpu")) == f"ran: Inductor, {T + 1} compiled-graph calls"
    assert impl.runtime == "inductor" and "mode=default" in impl.describe()


@CUDA
def test_fused_compiled_with_cuda_graphs_matches_fused_on_every_call(tiny, tf32_off):
    """mode="reduce-overhead": warm-up, recording and replays of CUDA graph trees, the state carried over."""
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1)).cuda()

    def calls(impl: lstm_impls.LSTMImpl, n: int = 4) -> list[list[torch.Tensor]]:
        impl.load_lstm_weights(*(w.cuda() for w in lstm_layout(I, H)))
        results, state = [], None
        for _ in range(n):
            impl.zero_grad(set_to_none=True)
            y, (h, c) = impl(x, state)
            (y.square().sum() + c.sum()).backward()
            results.append([y.detach().clone(), h.detach().clone(), c.detach().clone(), *impl.lstm_weights(grad=True)])
            state = (h.detach(), c.detach())
        return results

    want = calls(lstm_impls.create("fused", I, H, device="cuda"))
    got = calls(lstm_impls.create("fused_compiled", I, H, device="cuda", mode="reduce-overhead"))
    for n, (w, g) in enumerate(zip(want, got)):
        for k, (a, b) in enumerate(zip(g, w)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m, n=n, k=k: f"call {n}, tensor {k}: {m}")


def test_triton_is_unsupported_on_a_cpu_without_the_interpreter():
    triton_lstm = pytest.importorskip("lstm_impls.triton_lstm")
    if triton_lstm.INTERPRETED:
        pytest.skip("TRITON_INTERPRET is set in this process: the interpreter runs the kernels on the CPU")
    assert "does not run on cpu" in lstm_impls.get("triton").unsupported_reason("cpu", torch.float32)
    assert "float64" in lstm_impls.get("triton").unsupported_reason("cuda", torch.float64)


# Run in a fresh process: triton.jit reads TRITON_INTERPRET when the kernels are defined, at import.
_INTERPRETED = """
import json, sys
import torch
import lstm_impls
from bench.instruments.equality import max_abs_errors

out = {"describe": lstm_impls.create("triton", 4, 6).describe(), "errors": {}}
for shape in json.loads(sys.argv[1]):  # (T, B, I, H), and a configuration of nn.LSTM's keywords
    out["errors"][str(shape)] = max_abs_errors("triton", *shape[:4], **(shape[4] if len(shape) > 4 else {}))
# Under autocast the float32 kernels run the sequence in float32; a packed batch runs span by span.
out["autocast"] = max_abs_errors("triton", 4, 2, 6, 5, amp=torch.bfloat16)
out["packed"] = max_abs_errors("triton", 5, 3, 6, 5, lengths=[2, 5, 4], num_layers=2, bidirectional=True)

# What autograd keeps for backward, per call, on T=3, B=2, I=4, H=5: shapes of the saved tensors.
impl = lstm_impls.create("triton", 4, 5)
saved = []
x = torch.randn(3, 2, 4, requires_grad=True)
with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(list(t.shape)) or t, lambda t: t):
    y, (h, c) = impl(x)
(y.sum() + h.sum() + c.sum()).backward()
out["saved"] = saved
print(json.dumps(out))
"""


def test_triton_kernels_match_nn_lstm_under_the_interpreter(tiny):
    """Forward and every gradient, on the tiny shape and on one of several tiles of batch, hidden units and
    inner dimension (B > BLOCK_B, H > BLOCK_H, 4H > BLOCK_K), with Triton's interpreter on CPU tensors."""
    pytest.importorskip("triton")
    from lstm_impls.triton_lstm import BLOCK_B, BLOCK_H

    shapes = [[tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]],
              [4, BLOCK_B + 2, 5, BLOCK_H + 2],
              [4, 2, 6, 5, {"num_layers": 2, "bidirectional": True, "batch_first": True}]]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED, json.dumps(shapes)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["describe"].endswith("(Triton interpreter)")
    for shape, errors in out["errors"].items():
        assert len(errors) == (6 + 4 * 4 if "num_layers" in shape else 10)  # y, h, c, 3 inputs' and every weight's
        worse = {key: err for key, err in errors.items() if not err <= ATOL}
        assert not worse, f"triton at (T, B, I, H) = {shape} differs from nn.LSTM by more than {ATOL}: {worse}"
    for case in ("autocast", "packed"):
        worse = {key: err for key, err in out[case].items() if not err <= ATOL}
        assert not worse, f"triton {case} differs from nn.LSTM by more than {ATOL}: {worse}"
    # x, h0, W_x, W_h, the outputs; then the four activated gates (B, 4H) and c (B, H) per step, and c0
    T, B, I, H = 3, 2, 4, 5
    assert out["saved"] == [[T, B, I], [B, H], [I, 4 * H], [H, 4 * H], [T, B, H], [T, B, 4 * H], [T, B, H], [B, H]]
