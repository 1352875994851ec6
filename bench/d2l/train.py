"""d2l's `train_ch8` with any registered implementation: perplexity, tokens/s and predictions."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .data import SeqDataLoader, Vocab
from .model import RNNModel, sgd, train_step


def predict(prefix: str, num_preds: int, model: RNNModel, vocab: Vocab, device: torch.device) -> str:
    """d2l's predict_ch8: warm up on prefix, then append num_preds greedy characters."""
    state, outputs = None, [vocab[prefix[0]]]
    with torch.no_grad():
        def step(token: int):
            return model(torch.tensor([[token]], device=device), state)

        for y in prefix[1:]:
            _, state = step(outputs[-1])
            outputs.append(vocab[y])
        for _ in range(num_preds):
            y_hat, state = step(outputs[-1])
            outputs.append(int(y_hat.argmax(dim=1).reshape(1)))
    return "".join(vocab.to_tokens(outputs))


def train_epoch(model: RNNModel, loader: SeqDataLoader, optimizer: torch.optim.Optimizer,
                device: torch.device, use_random_iter: bool) -> tuple[float, float]:
    """d2l's train_epoch_ch8: one pass; returns (perplexity, tokens per second)."""
    state, loss_sum, tokens = None, torch.zeros((), device=device, dtype=torch.float64), 0
    start = time.perf_counter()
    for X, Y in loader:
        if use_random_iter:
            state = None  # a fresh zero state for each random minibatch
        X, Y = X.to(device), Y.to(device)
        loss, state = train_step(model, optimizer, X, Y, state)
        loss_sum += loss * Y.numel()
        tokens += Y.numel()
    ppl = math.exp(loss_sum.item() / tokens)  # .item() synchronizes before the clock stops
    return ppl, tokens / (time.perf_counter() - start)


def train(model: RNNModel, loader: SeqDataLoader, vocab: Vocab, *, lr: float, num_epochs: int,
          device: torch.device, use_random_iter: bool = False, curve: Path | None = None,
          log: Callable[[str], None] = print) -> tuple[float, float]:
    """d2l's train_ch8: progress every 10 epochs, then the final line and two predictions."""
    optimizer = sgd(model, lr)
    writer, curve_file = None, None
    if curve is not None:
        curve_file = open(curve, "w", newline="")
        writer = csv.writer(curve_file)
        writer.writerow(["epoch", "perplexity", "tokens_per_s", "elapsed_s"])
    begin = time.perf_counter()
    try:
        for epoch in range(1, num_epochs + 1):
            ppl, speed = train_epoch(model, loader, optimizer, device, use_random_iter)
            if writer is not None:
                writer.writerow([epoch, repr(ppl), repr(speed), repr(time.perf_counter() - begin)])
                curve_file.flush()
            if epoch % 10 == 0 or epoch == 1 or epoch == num_epochs:
                log(f"epoch {epoch}/{num_epochs}  perplexity {ppl:.2f}  {speed:.0f} tokens/sec  "
                    f"{predict('time traveller', 50, model, vocab, device)!r}")
    finally:
        if curve_file is not None:
            curve_file.close()
    log(f"perplexity {ppl:.1f}, {speed:.1f} tokens/sec on {device}")
    log(predict("time traveller", 50, model, vocab, device))
    log(predict("traveller", 50, model, vocab, device))
    return ppl, speed
