"""The instruments: time, memory, FLOPs, equality with nn.LSTM, and the environment they ran in."""
