"""lstm-bench: the instruments (model, data, timing, memory, FLOPs) and the pytest-benchmark suite."""
