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

    assert script_lstm()[0].qualified_name != script_lstm()[0].qualified_name


def test_reused_scripted_plans_are_a_fresh_modules_at_another_shape():
    """Under reuse_compiled (lstm-bench run's timing-only workers) a new ScriptedLSTM runs the function an earlier
    one optimized, at its own shape: the same optimized graph as a freshly scripted module's, shapes aside, and the
    same outputs and gradients."""
    import re

    def steps(impl, batch, hidden, calls=4):
        x = torch.randn(5, batch, 3, generator=torch.Generator().manual_seed(1))
        for _ in range(calls):  # the profiling executor optimizes after its profiled runs
            impl.zero_grad()
            y, _ = impl(x)
            y.sum().backward()
        plan = impl._scripted.graph_for(x, torch.zeros(batch, hidden), torch.zeros(batch, hidden), impl.params(0, 0))
        shapes_aside = re.sub(r"%[\w.]+", "%v", re.sub(r"Float\([^)]*\)", "Float", str(plan)))
        return y, [p.grad for p in impl.parameters()], shapes_aside

    with lstm_impls.reuse_compiled():
        first = lstm_impls.create("scripted", 3, 8)
        steps(first, 2, 8)
        reused = lstm_impls.create("scripted", 3, 12)
        reused_y, reused_grads, reused_plan = steps(reused, 4, 12)
        assert reused._scripted is first._scripted and reused.reused_compiled and not first.reused_compiled
    fresh = lstm_impls.create("scripted", 3, 12)
    fresh.load_state_dict(reused.state_dict())
    fresh_y, fresh_grads, fresh_plan = steps(fresh, 4, 12)
    assert fresh._scripted is not first._scripted and not fresh.reused_compiled
    assert reused_plan == fresh_plan
    torch.testing.assert_close(reused_y, fresh_y)
    for a, b in zip(reused_grads, fresh_grads):
        torch.testing.assert_close(a, b)


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


# ----------------------------------------------------------------------------- nn.LSTM's configurations

#: (T, B, I, H), with I = 2 * proj: every layer of the projected bidirectional LSTM reads the same width,
#: so torch.compile compiles `compiled`'s cell for one shape.
CONFIG_SHAPE = (4, 2, 6, 5)
CONFIGS = {
    "2-layer": {"num_layers": 2},
    "bidirectional": {"bidirectional": True},
    "3-layer-bidirectional-proj": {"num_layers": 3, "bidirectional": True, "proj_size": 3},
    "batch-first": {"batch_first": True},
    "2-layer-bidirectional-batch-first": {"num_layers": 2, "bidirectional": True, "batch_first": True},
}
#: torch.compile costs seconds per first compile: the compiled implementations get one configuration each,
#: the widest they support (their stacking is the eager ones', only `run` differs)
COMPILED_CONFIG = {"compiled": "3-layer-bidirectional-proj", "fused_compiled": "2-layer-bidirectional-batch-first"}
CONFIG_CASES = [pytest.param(name, config, id=f"{name}-{config}") for name in lstm_impls.names()
                for config in CONFIGS if COMPILED_CONFIG.get(name, config) == config]


def nn_lstm_names(num_layers: int = 1, bidirectional: bool = False, proj_size: int = 0, **_) -> set[str]:
    """nn.LSTM's own parameter names for a configuration, from nn.LSTM itself."""
    return {name for name, _ in torch.nn.LSTM(6, 5, num_layers, bidirectional=bidirectional,
                                                proj_size=proj_size).named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, config", CONFIG_CASES)
def test_configurations_match_nn_lstm(name, config, device, tf32_off):
    """Outputs, final state, the gradients of the input, the initial state and every weight, against a
    float64 nn.LSTM of the same configuration; an implementation that does not support it says why."""
    kwargs = CONFIGS[config]
    reason = lstm_impls.get(name).unsupported_reason(device, torch.float32, **kwargs)
    if reason and lstm_impls.get(name).unsupported_reason(device, torch.float32):
        pytest.skip(reason)  # not on this device at all (triton on a CPU)
    if reason:
        assert "proj_size" in reason and name in reason, reason
        with pytest.raises(Unsupported, match="does not support proj_size"):
            lstm_impls.create(name, 6, 5, device=device, **kwargs)
        return
    errors = max_abs_errors(name, *CONFIG_SHAPE, device=device, **kwargs)
    names = nn_lstm_names(**kwargs)
    if "num_layers" not in kwargs and "bidirectional" not in kwargs:
        names = {n.removesuffix("_l0") for n in names}  # one layer: the chapter's names
    assert set(errors) == {"y", "h", "c", "x.grad", "h0.grad", "c0.grad"} | {f"{n}.grad" for n in names}
    worse = {key: err for key, err in errors.items() if not err <= ATOL}
    assert not worse, f"{name} {config} differs from nn.LSTM by more than {ATOL}: {worse}"


@pytest.mark.parametrize("name", ["fused", "fused_compiled", "triton"])
def test_fused_sequence_declares_no_projection(name):
    reason = lstm_impls.get(name).unsupported_reason("cuda", torch.float32, proj_size=2)
    if reason and "installed" in reason:
        pytest.skip(reason)
    assert reason == f"{name} does not support proj_size"
    assert lstm_impls.get(name).unsupported_reason("cuda", torch.float32, num_layers=3, bidirectional=True) is None


def test_an_implementation_supports_only_what_it_declares():
    class SingleLayer(LSTMImpl):
        description = "declares nothing beyond the chapter's LSTM"

    assert SingleLayer.unsupported_reason("cpu", torch.float32) is None
    with pytest.raises(Unsupported, match="SingleLayer does not support num_layers, bidirectional"):
        SingleLayer(3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(TypeError, match="unknown configuration keyword"):
        SingleLayer.unsupported_reason("cpu", torch.float32, num_heads=2)


@pytest.mark.parametrize("config, match", [
    ({"num_layers": 0}, "num_layers must be a positive int"), ({"num_layers": 1.5}, "num_layers"),
    ({"bidirectional": "yes"}, "bidirectional must be a bool"), ({"batch_first": 1}, "batch_first must be a bool"),
    ({"proj_size": 4}, "proj_size must be an int, 0 <= proj_size < hidden_size"), ({"proj_size": -1}, "proj_size"),
    ({"dropout": 1.5}, "dropout must be a number in"), ({"dropout": True}, "dropout"),
])
def test_configurations_nn_lstm_refuses_are_refused(config, match):
    for name in ("scratch", "cudnn"):
        with pytest.raises(ValueError, match=match):
            lstm_impls.create(name, 3, 4, **config)


@pytest.mark.parametrize("name", ["scratch", "fused", "cudnn"])
def test_state_shape_follows_the_state_passed_in(name):
    """One layer in one direction: (B, H) as the chapter has it, or nn.LSTM's (1, B, H) when that is passed in;
    more layers or directions: nn.LSTM's (layers * directions, B, H)."""
    T, B, I, H = 3, 2, 4, 5
    x = torch.randn(T, B, I)
    one = lstm_impls.create(name, I, H)
    _, (h, c) = one(x)
    assert h.shape == c.shape == (B, H)
    y, (h, c) = one(x, (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    assert h.shape == c.shape == (1, B, H)
    torch.testing.assert_close(h[0], one(x)[1][0])
    deep = lstm_impls.create(name, I, H, num_layers=2, bidirectional=True, batch_first=True)
    y, (h, c) = deep(x.transpose(0, 1))
    assert y.shape == (B, T, 2 * H) and h.shape == c.shape == (4, B, H)
    if name != "cudnn":  # nn.LSTM raises its own RuntimeError
        with pytest.raises(ValueError, match=r"state must be h \(4, 2, 5\)"):
            deep(x.transpose(0, 1), (torch.zeros(B, H), torch.zeros(B, H)))


def test_default_configuration_keeps_the_chapters_parameters():
    """The memory model and the chapter's code count on these names and shapes, in this order."""
    from lstm_impls import cell

    I, H = 4, 5
    scratch = dict(lstm_impls.create("scratch", I, H).named_parameters())
    assert list(scratch) == list(cell.PARAM_NAMES)
    assert scratch["W_xi"].shape == (I, H) and scratch["W_hi"].shape == (H, H) and scratch["b_i"].shape == (H,)
    assert list(dict(lstm_impls.create("fused", I, H).named_parameters())) == ["W_x", "W_h", "b"]
    assert list(dict(lstm_impls.create("cudnn", I, H).named_parameters())) == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    deep = dict(lstm_impls.create("scratch", I, H, num_layers=2, bidirectional=True, proj_size=3).named_parameters())
    assert len(deep) == 4 * 13
    assert deep["W_xi_l0_reverse"].shape == (I, H) and deep["W_xi_l1"].shape == (6, H)
    assert deep["W_hi_l1_reverse"].shape == (3, H) and deep["W_hr_l1_reverse"].shape == (H, 3)


@pytest.mark.parametrize("name", ["scratch", "scripted", "fused", "cudnn"])
def test_nn_lstm_weights_round_trip_by_name(name):
    config = {"num_layers": 2, "bidirectional": True, **({"proj_size": 3} if name != "fused" else {})}
    ref = torch.nn.LSTM(6, 5, **config)
    impl = lstm_impls.create(name, 6, 5, **config)
    impl.load_nn_lstm(ref)
    named = impl.named_lstm_weights()
    assert list(named) == [n for n, _ in ref.named_parameters()]
    for key, p in ref.named_parameters():
        if key.startswith("bias_hh"):  # one bias per gate where the implementation has one: (sum, 0)
            ih = key.replace("hh", "ih")
            torch.testing.assert_close(named[ih] + named[key], (p + getattr(ref, ih)).detach())
        elif not key.startswith("bias_ih"):
            torch.testing.assert_close(named[key], p.detach(), atol=0, rtol=0)
    for wrong in ({"num_layers": 3}, {"bidirectional": False}, {"proj_size": 0 if name != "fused" else 2}):
        other = torch.nn.LSTM(6, 5, **(config | wrong))
        with pytest.raises(ValueError, match="does not match"):
            impl.load_nn_lstm(other)


@pytest.mark.parametrize("name", ["scratch", "fused", "cudnn"])
def test_dropout_between_layers_in_training_only(name):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 5, 2)
    with_dropout = lstm_impls.create(name, 4, 5, num_layers=2, dropout=0.5)
    without = lstm_impls.create(name, 4, 5, num_layers=2)
    for impl in (with_dropout, without):
        impl.load_nn_lstm(ref)
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        with_dropout.eval()
        torch.testing.assert_close(with_dropout(x)[0], without(x)[0])
        with_dropout.train()
        assert not torch.allclose(with_dropout(x)[0], without(x)[0])


def test_check_command_takes_the_configuration_and_names_what_is_unsupported(capsys):
    from bench.cli import main

    assert main(["check", "--impls", "scratch,fused,cudnn", "--seq-len", "4", "--batch-size", "2", "--input-size",
                 "6", "--hidden-size", "5", "--num-layers", "3", "--bidirectional", "--proj-size", "3",
                 "--batch-first"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "num_layers=3 bidirectional=True proj_size=3 batch_first=True" in lines[0]
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines[2:]}
    assert rows["fused"] == "unsupported: fused does not support proj_size"
    for name in ("scratch", "cudnn"):
        forward, backward, _worst = rows[name].split()
        assert float(forward) <= ATOL and float(backward) <= ATOL, rows[name]


# ----------------------------------------------------------------------------- packed variable-length batches

#: (T, B, I, H) and each sequence's length, unsorted, with ties and a sequence of one step
PACKED_SHAPE, PACKED_LENGTHS = (7, 6, 6, 5), [5, 2, 7, 7, 1, 4]
PACKED_CONFIGS = {"1-layer": {}, "2-layer-bidirectional": {"num_layers": 2, "bidirectional": True},
                  "2-layer-bidirectional-proj": {"num_layers": 2, "bidirectional": True, "proj_size": 3}}
#: the compiled ones recompile for each span's shape: one configuration each, and lengths that make two spans
#: (batch 6, then 4) instead of five, still unsorted, with ties and a sequence of one step
PACKED_COMPILED = {"compiled": "2-layer-bidirectional-proj", "fused_compiled": "2-layer-bidirectional"}
PACKED_LENGTHS_COMPILED = [7, 1, 7, 7, 1, 7]
PACKED_CASES = [pytest.param(name, config, id=f"{name}-{config}") for name in lstm_impls.names()
                for config in PACKED_CONFIGS if PACKED_COMPILED.get(name, config) == config]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, config", PACKED_CASES)
def test_packed_sequences_match_nn_lstm(name, config, device, tf32_off):
    """A PackedSequence in, as nn.LSTM takes it: the outputs at the valid positions, each sequence's final
    state at its own length, and every gradient, against a float64 nn.LSTM on the same packed batch."""
    kwargs = PACKED_CONFIGS[config]
    reason = lstm_impls.get(name).unsupported_reason(device, torch.float32, **kwargs)
    if reason:
        pytest.skip(reason)
    lengths = PACKED_LENGTHS_COMPILED if name in PACKED_COMPILED else PACKED_LENGTHS
    errors = max_abs_errors(name, *PACKED_SHAPE, device=device, lengths=lengths, **kwargs)
    assert {"y", "h", "c", "x.grad", "h0.grad", "c0.grad"} <= set(errors)
    worse = {key: err for key, err in errors.items() if not err <= ATOL}
    assert not worse, f"{name} {config} on packed input differs from nn.LSTM by more than {ATOL}: {worse}"


def test_packed_output_keeps_the_packing_and_ignores_the_padding():
    """The padding's values change nothing; the output is packed as the input was."""
    from torch.nn.utils.rnn import pack_padded_sequence

    lstm = lstm_impls.create("scratch", 3, 4)
    x = torch.randn(5, 3, 3)
    lengths = torch.tensor([2, 5, 3])
    noisy = x.clone()
    for b, n in enumerate(lengths.tolist()):
        noisy[n:, b] = 1e3
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    (y, (h, c)), (y2, (h2, c2)) = lstm(packed), lstm(pack_padded_sequence(noisy, lengths, enforce_sorted=False))
    assert torch.equal(y.batch_sizes, packed.batch_sizes) and torch.equal(y.unsorted_indices, packed.unsorted_indices)
    assert torch.equal(y.data, y2.data) and torch.equal(h, h2) and torch.equal(c, c2)
    assert h.shape == (3, 4)  # the chapter's one-layer LSTM keeps its 2-D state
    alone, (h_alone, _) = lstm(x[:2, :1])  # sequence 0 by itself, its own 2 steps
    assert torch.allclose(h[0], h_alone[0], atol=1e-6)


def test_accuracy_check_writes_the_error_growth_and_the_report_shows_it(tmp_path, capsys):
    """check --accuracy: a row per (implementation, precision, T) written into --out with its plot; float32
    agrees with float64 to float32's rounding, bfloat16 (native or under autocast) to bfloat16's; the report
    of a run directory holding the files has the section. (cudnn under bfloat16 autocast fails where oneDNN
    runs no bfloat16: nn.LSTM picks oneDNN for the float32 input, autocast then hands it bfloat16.)"""
    import subprocess
    import sys

    import pandas as pd

    from bench.cli import main
    from bench.grid import ACCURACY_COLUMNS
    from bench.readers.report import write_report

    run = tmp_path / "run"  # a run in a process of its own: `run` sets torch's threads for the process
    subprocess.run([sys.executable, "-m", "bench.cli", "run", "--impls", "scratch", "--batch-sizes", "2",
                    "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu", "--results-dir", str(tmp_path),
                    "--run-id", "run", "--processes", "1"], check=True, capture_output=True)
    assert main(["check", "--accuracy", "--impls", "scratch,fused", "--precisions",
                 "float32,bfloat16,autocast-bfloat16", "--seq-lens", "3,30", "--batch-size", "2",
                 "--input-size", "5", "--hidden-size", "8", "--out", str(run)]) == 0
    df = pd.read_csv(run / "accuracy.csv")
    assert list(df.columns) == list(ACCURACY_COLUMNS) and len(df) == 2 * 3 * 2 and (df.status == "ok").all()
    by = df.set_index(["impl", "precision", "seq_len"])
    for impl in ("scratch", "fused"):
        for column in ("outputs_max_rel", "grads_max_rel"):
            assert by.loc[(impl, "float32", 30), column] < 1e-5
            for precision in ("bfloat16", "autocast-bfloat16"):
                assert 1e-4 < by.loc[(impl, precision, 30), column] < 0.1, (impl, precision, column)
        assert (by.loc[impl, "outputs_mean_rel"] <= by.loc[impl, "outputs_max_rel"] * 1.0001).all()
    assert (run / "accuracy.png").stat().st_size > 0 and "| scratch | bfloat16 |" in (run / "accuracy.md").read_text()
    report = write_report([run]).read_text()
    assert "## Error along the sequence, per precision" in report and "| fused | autocast-bfloat16 |" in report


def test_check_on_packed_lengths_prints_each_implementations_error(capsys):
    from bench.cli import main

    assert main(["check", "--impls", "scratch,fused", "--lengths", "uniform:0.3", "--seq-len", "6",
                 "--batch-size", "5", "--input-size", "4", "--hidden-size", "6"]) == 0
    out = capsys.readouterr().out
    assert "packed at lengths [" in out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["scratch", "fused"]
    assert all(float(r[1]) <= ATOL and float(r[2]) <= ATOL for r in rows), rows
