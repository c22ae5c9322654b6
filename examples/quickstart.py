"""A minute's tour: each layer on a padded batch with irregular timestamps.

Run: .venv/bin/python examples/quickstart.py
"""

import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM

torch.manual_seed(0)
B, T, I, H = 4, 50, 3, 16
x = torch.randn(B, T, I)
lengths = torch.tensor([50, 31, 12, 40])  # padded at the end
times = torch.rand(B, T).mul(2.0).cumsum(1).double()  # irregular, increasing timestamps (ms)

for cls in (LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM):
    layer = cls(I, H, num_layers=2, batch_first=True, bidirectional=True)
    out, (h_n, c_n) = layer(x, times=times, lengths=lengths)
    print(f"{cls.__name__:14s} output {tuple(out.shape)}  h_n {tuple(h_n.shape)}  "
          f"zero past the end: {bool(out[2, 12:].eq(0).all())}")

phased = PhasedLSTM(I, H, batch_first=True).eval()
k = phased.time_gates(times[0, :10])  # (10, H): time-gate openness of each unit
print("fraction of (step, unit) pairs with the time gate open:", float((k > 0).float().mean()))
