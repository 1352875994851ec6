"""Every registered implementation computes nn.LSTM's function: outputs, state and all gradients."""

import pytest
import torch
from torch import nn

import lstm_impls
from lstm_impls import LSTMImpl, Unsupported

ATOL = 1e-5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU-only torch or no GPU)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def reference(weights, x, h0, c0):
    """nn.LSTM in float64 (ATen's native kernels on CPU): the ground truth every float32 run is held to."""
    I, H = x.shape[-1], h0.shape[-1]
    ref = nn.LSTM(I, H, dtype=torch.float64)
    with torch.no_grad():
        for p, w in zip((ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0), weights):
            p.copy_(w)
    return ref, run_both_ways(lambda x, s: _ref_call(ref, x, s), x, h0, c0, torch.float64)


def _ref_call(ref, x, state):
    y, (h, c) = ref(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
    return y, (h[0], c[0])


def run_both_ways(call, x, h0, c0, dtype, device="cpu"):
    """Forward with a non-zero initial state, then backward of a random linear functional."""
    x, h0, c0 = (t.detach().to(device, dtype).requires_grad_() for t in (x, h0, c0))
    y, (h, c) = call(x, (h0, c0))
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device, dtype) for t in (y, h, c)]
    sum((t * w).sum() for t, w in zip((y, h, c), cot)).backward()
    return {"y": y, "h": h, "c": c, "x.grad": x.grad, "h0.grad": h0.grad, "c0.grad": c0.grad}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", lstm_impls.names())
def test_matches_nn_lstm_values_and_gradients(name, device, tiny, tf32_off):
    T, B, I, H = tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"]
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
               for shape in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    x, h0, c0 = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((T, B, I), (B, H), (B, H)))
    ref, want = reference(weights, x, h0, c0)

    impl = lstm_impls.create(name, I, H, device=device)
    assert isinstance(impl, LSTMImpl)
    impl.load_lstm_weights(*(w.to(device, torch.float32) for w in weights))
    got = run_both_ways(impl, x, h0, c0, torch.float32, device)
    got.update(zip(("weight_ih.grad", "weight_hh.grad", "bias_ih.grad", "bias_hh.grad"), impl.lstm_weights(grad=True)))
    for key, p in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                      (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)):
        want[f"{key}.grad"] = p.grad

    assert set(got) == set(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        err = (got[key].cpu().double() - want[key]).abs().max().item()
        assert err <= ATOL, f"{name}: {key} differs from nn.LSTM by {err:.3g}"


@pytest.mark.parametrize("name", lstm_impls.names())
def test_zero_state_and_weight_round_trip(name, tiny):
    I, H = tiny["input_size"], tiny["hidden_size"]
    a, b = lstm_impls.create(name, I, H), lstm_impls.create(name, I, H)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(s, generator=g) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    a.load_lstm_weights(*weights)
    b.load_lstm_weights(*a.lstm_weights())  # what one reports, another accepts
    x = torch.randn(tiny["seq_len"], tiny["batch_size"], I, generator=g)
    with torch.no_grad():
        ya, (ha, ca) = a(x)
        yb, _ = b(x, a.zero_state(tiny["batch_size"], x))
    assert ya.shape == (tiny["seq_len"], tiny["batch_size"], H) and ha.shape == ca.shape == (tiny["batch_size"], H)
    torch.testing.assert_close(ya, yb, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="weight_hh must have shape"):
        a.load_lstm_weights(weights[0], weights[0], weights[2], weights[3])


def test_names_sorted_and_complete():
    assert lstm_impls.names() == sorted(lstm_impls.names())
    assert {"scratch", "scripted", "compiled", "cudnn"} <= set(lstm_impls.names())
    for name in lstm_impls.names():
        assert lstm_impls.get(name).description


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        lstm_impls.create("nope", 3, 4)
    for name in lstm_impls.names():
        assert name in str(err.value)


@pytest.mark.parametrize("sizes", [(0, 4), (3, 0), (-1, 4), (3, 2.5)])
def test_non_positive_sizes_rejected(sizes):
    with pytest.raises(ValueError, match="must be a positive int"):
        lstm_impls.create("scratch", *sizes)


def test_unsupported_dtype_and_device():
    with pytest.raises(Unsupported, match="int32"):
        lstm_impls.create("cudnn", 3, 4, dtype=torch.int32)
    assert lstm_impls.get("cudnn").unsupported_reason("cpu", torch.float16) is None
    assert "mps" in lstm_impls.get("scratch").unsupported_reason("mps", torch.float32)


@pytest.mark.parametrize("dtype, backend", [(torch.float32, "oneDNN"), (torch.bfloat16, "oneDNN"),
                                            (torch.float16, "native"), (torch.float64, "native")])
def test_cudnn_description_names_the_kernel_that_runs(dtype, backend):
    """The description says which library runs; the profiler shows which op actually ran."""
    impl = lstm_impls.create("cudnn", 3, 4, dtype=dtype)
    with torch.profiler.profile() as prof:
        impl(torch.randn(2, 1, 3, dtype=dtype))
    ran_onednn = any(e.name == "aten::mkldnn_rnn_layer" for e in prof.events())
    assert backend in impl.describe() and ran_onednn == (backend == "oneDNN")


def test_register_decorator_and_module_class_string():
    @lstm_impls.register("test-outside")
    class Outside(lstm_impls.get("scratch")):
        description = "registered from a test"

    try:
        assert "test-outside" in lstm_impls.names()
        assert isinstance(lstm_impls.create("test-outside", 3, 4), Outside)
        with pytest.raises(ValueError, match="already registered"):
            lstm_impls.register("test-outside")(Outside)
    finally:
        lstm_impls._REGISTRY.pop("test-outside")
    by_string = lstm_impls.create("lstm_impls.cudnn:CudnnLSTM", 3, 4)
    assert type(by_string).__name__ == "CudnnLSTM"
    with pytest.raises(ValueError, match="not a subclass"):
        lstm_impls.get("torch.nn:Linear")
    with pytest.raises(ValueError, match="cannot import"):
        lstm_impls.get("no_such_module:X")


@pytest.mark.parametrize("name", ["scripted", "compiled"])
def test_torchscript_deprecation_is_quiet(name, tiny):
    """TorchScript warns that it is deprecated in torch 2.13; our implementations keep that to themselves."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impl = lstm_impls.create(name, tiny["input_size"], tiny["hidden_size"])
        impl(torch.randn(tiny["seq_len"], tiny["batch_size"], tiny["input_size"]))
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]
