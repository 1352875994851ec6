"""Every registered implementation computes nn.LSTM's function: outputs, state and all gradients."""

import pytest
import torch

import lstm_impls
from bench.instruments.equality import max_abs_errors
from bench.instruments.what_ran import what_ran
from lstm_impls import LSTMImpl, Unsupported

ATOL = 1e-5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU-only torch or no GPU)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def skip_unsupported(name: str, device: str = "cpu") -> None:
    """Skip where the implementation declares it does not run (triton: CUDA only, or not installed)."""
    reason = lstm_impls.get(name).unsupported_reason(device, torch.float32)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", lstm_impls.names())
def test_matches_nn_lstm_values_and_gradients(name, device, tiny, tf32_off):
    skip_unsupported(name, device)
    errors = max_abs_errors(name, tiny["seq_len"], tiny["batch_size"], tiny["input_size"], tiny["hidden_size"],
                            device=device)
    assert set(errors) == {"y", "h", "c", "x.grad", "h0.grad", "c0.grad",
                           "weight_ih.grad", "weight_hh.grad", "bias_ih.grad", "bias_hh.grad"}
    worse = {key: err for key, err in errors.items() if not err <= ATOL}
    assert not worse, f"{name} differs from nn.LSTM by more than {ATOL}: {worse}"


@pytest.mark.parametrize("name", lstm_impls.names())
def test_zero_state_and_weight_round_trip(name, tiny):
    skip_unsupported(name)
    I, H = tiny["input_size"], tiny["hidden_size"]
    a, b = lstm_impls.create(name, I, H), lstm_impls.create(name, I, H)
    assert isinstance(a, LSTMImpl) and isinstance(a, torch.nn.Module)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cudnn_description_names_the_kernel_that_ran(dtype):
    """The description is read from a profiled call: oneDNN exactly where the profiler shows its op
    (float32; bfloat16 only where the CPU has native bfloat16), ATen's native kernels elsewhere."""
    impl = lstm_impls.create("cudnn", 3, 4, dtype=dtype)
    x = torch.randn(2, 1, 3, dtype=dtype)
    with torch.profiler.profile() as prof:
        impl(x)
    ran_onednn = any(e.name == "aten::mkldnn_rnn_layer" for e in prof.events())
    description = what_ran(lambda: impl(x), torch.device("cpu"))
    assert ("oneDNN mkldnn_rnn_layer" in description) == ran_onednn
    assert ("ATen native LSTM kernels" in description) == (not ran_onednn)
    assert "oneDNN" not in impl.describe() and "native" not in impl.describe()  # no guess in the static text
    if dtype == torch.float32:
        assert ran_onednn


def test_descriptions_say_how_the_scratch_code_ran(tiny):
    x = torch.randn(tiny["seq_len"], tiny["batch_size"], tiny["input_size"])
    for name, expected in (("scratch", "eager ATen ops"), ("scripted", "TorchScript, no fusion groups")):
        impl = lstm_impls.create(name, tiny["input_size"], tiny["hidden_size"])
        impl(x)  # scripts on the first call
        assert what_ran(lambda impl=impl: impl(x)[0].sum().backward(), torch.device("cpu")) == f"ran: {expected}"


def test_each_scripted_module_scripts_afresh(tiny):
    """torch.jit.script caches per function for the process; every ScriptedLSTM must pay its own scripting."""
    from lstm_impls.scripted import script_lstm

    assert script_lstm().qualified_name != script_lstm().qualified_name


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


def test_check_command_prints_each_implementations_error(capsys, tiny):
    from bench.cli import main

    assert main(["check", "--impls", "scratch,cudnn", "--seq-len", "5", "--batch-size", "3", "--input-size", "4",
                 "--hidden-size", "6"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["scratch", "cudnn"]
    assert all(float(r[1]) <= ATOL and float(r[2]) <= ATOL for r in rows), rows
