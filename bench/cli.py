"""The `lstm-bench` command: `run` (the benchmark grid), `train` (the d2l run), `demo` (a quick look)."""

from __future__ import annotations

import argparse
import sys
import time


class _Parser(argparse.ArgumentParser):
    """Bad input: one line on stderr and exit code 2, never a traceback or a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(Exception):
    """A bad option value found after parsing; reported like an argparse error."""


def _demo(args: argparse.Namespace) -> int:
    """Run every implementation's d2l training step a few times and print a table."""
    import statistics

    import torch

    import lstm_impls
    from bench.model import RNNModel, d2l_init_, sgd, train_step

    B, T, V, H = args.batch_size, args.num_steps, 28, args.hidden_size
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    print(f"d2l training step, batch {B}, {T} steps, vocab {V}, hidden {H}, on cpu ({torch.get_num_threads()} threads)")
    print(f"{'impl':<10} {'first step ms':>14} {'median step ms':>15}  description")
    for name in lstm_impls.names():
        model = d2l_init_(RNNModel(name, V, H))
        opt, state, times = sgd(model, 1.0), None, []
        for _ in range(args.steps):
            start = time.perf_counter()
            _, state = train_step(model, opt, X, Y, state)
            times.append((time.perf_counter() - start) * 1e3)
        print(f"{name:<10} {times[0]:>14.1f} {statistics.median(times[-5:]):>15.2f}  {model.rnn.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstm-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="run each implementation's training step a few times, print a table")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--num-steps", type=int, default=35)
    demo.add_argument("--hidden-size", type=int, default=256)
    demo.add_argument("--steps", type=int, default=12, help="training steps per implementation")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"lstm-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
