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
