"""The d2l character model and its steps, with every implementation."""

import pytest
import torch

import lstm_impls
from bench.d2l.model import RNNModel, d2l_init_, forward_step, lstm_layout_weights, sgd, train_step


def batch(tiny, seed=3):
    g = torch.Generator().manual_seed(seed)
    shape = (tiny["batch_size"], tiny["seq_len"])
    V = tiny["input_size"]
    return torch.randint(0, V, shape, generator=g), torch.randint(0, V, shape, generator=g)


# the implementations that run on this test's device (triton is CUDA-only: unsupported on a CPU)
ON_CPU = [n for n in lstm_impls.names() if lstm_impls.get(n).unsupported_reason("cpu", torch.float32) is None]


@pytest.mark.parametrize("name", ON_CPU)
def test_training_step_lowers_loss_on_a_fixed_batch(name, tiny):
    model = d2l_init_(RNNModel(name, tiny["input_size"], tiny["hidden_size"]))
    # d2l's 0.01 init makes early steps tiny at this size; larger weights give a clear signal.
    model.rnn.load_lstm_weights(*(w * 30 for w in model.rnn.lstm_weights()))
    optimizer = sgd(model, lr=1.0)
    X, Y = batch(tiny)
    losses = [train_step(model, optimizer, X, Y, None)[0].item() for _ in range(30)]
    assert losses[-1] < 0.9 * losses[0], losses  # random targets over 4 symbols: ln 4 = 1.386 at the start


def test_same_seed_same_model_across_implementations(tiny):
    X, Y = batch(tiny)
    losses = {name: forward_step(d2l_init_(RNNModel(name, tiny["input_size"], tiny["hidden_size"])), X, Y)[0]
              for name in ON_CPU}
    first = next(iter(losses.values()))
    for name, loss in losses.items():
        torch.testing.assert_close(loss, first, atol=1e-6, rtol=0, msg=name)


def test_d2l_init_is_small_normal_with_zero_biases():
    w_ih, w_hh, b_ih, b_hh = lstm_layout_weights(28, 256, generator=torch.Generator().manual_seed(0))
    assert w_ih.shape == (1024, 28) and w_hh.shape == (1024, 256)
    assert 0.009 < w_hh.std().item() < 0.011
    assert not b_ih.any() and not b_hh.any()


def test_state_is_carried_detached_and_forward_step_keeps_no_graph(tiny):
    model = d2l_init_(RNNModel("scratch", tiny["input_size"], tiny["hidden_size"]))
    X, Y = batch(tiny)
    _, state = train_step(model, sgd(model, 1.0), X, Y, None)
    assert all(not s.requires_grad for s in state)
    assert all(s.shape == (tiny["batch_size"], tiny["hidden_size"]) for s in state)
    loss, _ = forward_step(model, X, Y, state)
    assert not loss.requires_grad


#: the deep model with every implementation that runs it eagerly (compiling costs seconds a shape)
DEEP = [n for n in ON_CPU if lstm_impls.get(n).runtime != "inductor"
        and lstm_impls.get(n).unsupported_reason("cpu", torch.float32, num_layers=2) is None]


def test_deep_model_same_seed_same_numbers_across_implementations(tiny):
    """The book's deep LSTM (nn.LSTM(vocab, H, 2)): every layer d2l-initialised from the seed, the same in every
    implementation; layer 0 gets the numbers a one-layer model gets."""
    V, H = tiny["input_size"], tiny["hidden_size"]
    X, Y = batch(tiny)
    models = {name: d2l_init_(RNNModel(name, V, H, num_layers=2), seed=5) for name in DEEP}
    assert {"scratch", "cudnn", "fused"} <= set(models)
    weights = models["cudnn"].rnn.named_lstm_weights()
    assert set(weights) == {f"{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for k in (0, 1)}
    assert weights["weight_ih_l1"].shape == (4 * H, H)
    for key, w in weights.items():
        assert not w.any() if key.startswith("bias") else 0.003 < w.std().item() < 0.03, key
    one = d2l_init_(RNNModel("cudnn", V, H), seed=5).rnn.named_lstm_weights()
    torch.testing.assert_close(weights["weight_ih_l0"], one["weight_ih_l0"], atol=0, rtol=0)
    assert not torch.equal(weights["weight_hh_l1"], one["weight_hh_l0"])  # the second layer draws its own
    losses = {name: forward_step(model, X, Y)[0] for name, model in models.items()}
    for name, loss in losses.items():
        torch.testing.assert_close(loss, losses["cudnn"], atol=1e-6, rtol=0, msg=name)
    _, (h, c) = forward_step(models["scratch"], X, Y)
    assert h.shape == c.shape == (2, tiny["batch_size"], H)


@pytest.mark.parametrize("name", DEEP)
def test_deep_model_training_step_lowers_loss(name, tiny):
    model = d2l_init_(RNNModel(name, tiny["input_size"], tiny["hidden_size"], num_layers=2))
    rnn = model.rnn
    for layer, direction in rnn.layers_and_directions():  # larger weights for a clear signal, as above
        weights = rnn.lstm_weights(layer=layer, direction=direction)
        rnn.load_lstm_weights(*(w * 60 for w in weights), layer=layer, direction=direction)
    optimizer = sgd(model, lr=2.0)  # the book's deep LSTM trains at lr 2
    X, Y = batch(tiny)
    losses = [train_step(model, optimizer, X, Y, None)[0].item() for _ in range(30)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_bidirectional_model_reads_both_directions(tiny):
    model = d2l_init_(RNNModel("scratch", tiny["input_size"], tiny["hidden_size"], bidirectional=True))
    assert model.linear.in_features == 2 * tiny["hidden_size"]
    X, Y = batch(tiny)
    logits, (h, _) = model(X)
    assert logits.shape == (tiny["seq_len"] * tiny["batch_size"], tiny["input_size"])
    assert h.shape == (2, tiny["batch_size"], tiny["hidden_size"])


def test_a_steps_phases_are_marked_in_order_and_cover_the_step():
    """train_step marks forward, backward and optimizer once each, in that order; forward_step marks forward."""
    import time as _time

    from bench.d2l.model import RNNModel, d2l_init_, forward_step, sgd, train_step

    class Clock:
        def __init__(self):
            self.marks = []

        def mark(self, phase):
            self.marks.append((phase, _time.perf_counter()))

    model = d2l_init_(RNNModel("scratch", 5, 8))
    X = torch.randint(0, 5, (2, 3))
    clock = Clock()
    started = _time.perf_counter()
    train_step(model, sgd(model, 1.0), X, X, clock=clock)
    ended = _time.perf_counter()
    assert [m[0] for m in clock.marks] == ["forward", "backward", "optimizer"]
    assert started <= clock.marks[0][1] <= clock.marks[1][1] <= clock.marks[2][1] <= ended
    clock.marks.clear()
    forward_step(model, X, X, clock=clock)
    assert [m[0] for m in clock.marks] == ["forward"]


@pytest.mark.parametrize("name", ["scratch", "cudnn"])
def test_a_packed_batch_loss_is_the_mean_over_its_real_tokens(name):
    """The packed step's loss is each sequence run alone at its own length, every real token weighed once."""
    import torch.nn.functional as F

    model = d2l_init_(RNNModel(name, 5, 8))
    model.rnn.load_lstm_weights(*(w * 30 for w in model.rnn.lstm_weights()))
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randint(0, 5, (4, 6), generator=g), torch.randint(0, 5, (4, 6), generator=g)
    lengths = torch.tensor([3, 6, 1, 4])
    loss, _ = forward_step(model, X, Y, lengths=lengths)
    token_losses = []
    for b, n in enumerate(lengths.tolist()):
        logits, _ = model(X[b:b + 1, :n])
        token_losses.append(F.cross_entropy(logits, Y[b, :n], reduction="none"))
    torch.testing.assert_close(loss, torch.cat(token_losses).mean(), atol=1e-6, rtol=0)
    padded_loss, _ = forward_step(model, X, Y)
    assert abs(padded_loss.item() - loss.item()) > 1e-4  # the padding's tokens would have counted


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_autocast_steps_keep_float32_weights_and_train(amp, tiny):
    """Under autocast the parameters and their gradients stay float32; float16 scales the loss."""
    model = d2l_init_(RNNModel("scratch", tiny["input_size"], tiny["hidden_size"]))
    model.rnn.load_lstm_weights(*(w * 30 for w in model.rnn.lstm_weights()))
    optimizer = sgd(model, lr=1.0)
    scaler = torch.amp.GradScaler("cpu") if amp == torch.float16 else None
    X, Y = batch(tiny)
    losses = [train_step(model, optimizer, X, Y, None, amp=amp, scaler=scaler)[0].item() for _ in range(30)]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.9 * losses[0], losses
    if scaler is not None:
        assert scaler.get_scale() > 1  # the loss was scaled: its gradients unscaled before clipping
