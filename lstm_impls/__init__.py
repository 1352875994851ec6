"""LSTM implementations behind one interface.

    >>> import lstm_impls
    >>> lstm_impls.names()
    ['compiled', 'cudnn', 'fused', 'fused_compiled', 'scratch', 'scripted', 'triton']
    >>> lstm = lstm_impls.create("scratch", input_size=28, hidden_size=256)
    >>> deep = lstm_impls.create("scratch", 28, 256, num_layers=2, bidirectional=True)  # nn.LSTM's keywords

Wherever a name is accepted, a "package.module:Class" string naming an `LSTMImpl` subclass is too.
Outside code registers its own with the `register` decorator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from .base import CONFIG_DEFAULTS, LSTMImpl, State, Unsupported, reuse_compiled

__all__ = ["LSTMImpl", "State", "Unsupported", "create", "get", "names", "register", "reuse_compiled"]

# name -> class, or "module:Class" imported on first use (torch.compile's imports are slow).
_REGISTRY: dict[str, type[LSTMImpl] | str] = {
    "scratch": "lstm_impls.scratch:ScratchLSTM",
    "scripted": "lstm_impls.scripted:ScriptedLSTM",
    "compiled": "lstm_impls.compiled:CompiledLSTM",
    "cudnn": "lstm_impls.cudnn:CudnnLSTM",
    "fused": "lstm_impls.fused:FusedLSTM",
    "fused_compiled": "lstm_impls.fused_compiled:FusedCompiledLSTM",
    "triton": "lstm_impls.triton_lstm:TritonLSTM",  # CUDA; needs the optional triton extra
}


def register(name: str) -> Callable[[type[LSTMImpl]], type[LSTMImpl]]:
    """Class decorator: make an LSTMImpl subclass available as `name`."""

    def add(cls: type[LSTMImpl]) -> type[LSTMImpl]:
        if not (isinstance(cls, type) and issubclass(cls, LSTMImpl)):
            raise TypeError(f"{cls!r} is not a subclass of lstm_impls.LSTMImpl")
        if name in _REGISTRY:
            raise ValueError(f"an implementation named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def names() -> list[str]:
    """The registered implementation names, sorted."""
    return sorted(_REGISTRY)


def _import(spec: str) -> type[LSTMImpl]:
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import LSTM implementation {spec!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, LSTMImpl)):
        raise ValueError(f"{spec!r} is not a subclass of lstm_impls.LSTMImpl")
    return cls


def get(name: str) -> type[LSTMImpl]:
    """The class registered as `name`, or named by a "module:Class" string."""
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        if isinstance(entry, str):
            entry = _REGISTRY[name] = _import(entry)
            entry.name = name
        return entry
    if ":" in name:
        cls = _import(name)
        cls.name = cls.name or name
        return cls
    raise ValueError(f"unknown LSTM implementation {name!r}; known: {', '.join(names())} (or module:Class)")


def create(name: str, input_size: int, hidden_size: int, *, num_layers: int = 1, bidirectional: bool = False,
           proj_size: int = 0, batch_first: bool = False, dropout: float = 0.0,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options) -> LSTMImpl:
    """A new `name` LSTM on device in dtype, configured as nn.LSTM is (num_layers, bidirectional,
    proj_size, batch_first, dropout: nn.LSTM's meaning); options go to the implementation (e.g.
    compiled's mode).

    Raises ValueError for an unknown name, non-positive sizes or a configuration nn.LSTM refuses, and
    `Unsupported` (a ValueError) with the reason where the implementation does not run on that device,
    in that dtype or with that configuration.
    """
    config = {"num_layers": num_layers, "bidirectional": bidirectional, "proj_size": proj_size,
              "batch_first": batch_first, "dropout": dropout}
    # only what differs from the defaults is passed on, so an implementation written before these
    # keywords existed still takes the default configuration
    config = {key: value for key, value in config.items() if value != CONFIG_DEFAULTS[key]}
    return get(name)(input_size, hidden_size, device=device, dtype=dtype, **config, **options)
