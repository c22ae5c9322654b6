"""Running a trained layer on a live stream, one event at a time.

A sensor delivers events with timestamps; the model must answer after each one. ``Stream``
holds what a caller would otherwise carry by hand between calls (h, c and the last timestamp)
and calls the layer with one step, which takes its short path (see
``RecurrentLayer._forward_stream``: the time gate computed inline and, for a Phased LSTM at
evaluation, only the units whose gate is open)::

    layer = PhasedLSTM(3, 64, batch_first=True).eval()   # or any of LSTM, PeepholeLSTM, ...
    stream = Stream(layer)
    for x_t, t in events:            # x_t: (I,) or (B, I); t: a number or (B,) timestamps
        h_t = stream.push(x_t, t)    # (D * H,) or (B, D * H): the top layer's output at t

``push`` runs without gradients (it is for inference). Its output equals the layer's output
over the whole sequence at that step (tests/test_sparse.py).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn


class Stream:
    """Feeds ``layer`` one event per ``push``, carrying its state (h, c) and the last timestamp.

    Args:
        layer: a recurrent layer of this library (or torch.nn.LSTM, without timestamps); its
            mode (train / eval) is the caller's to set: at evaluation a Phased LSTM's leak is 0.
    """

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.reset()

    def reset(self) -> None:
        """Forget the state and the last timestamp: the next push starts a new sequence."""
        self.state: tuple[Tensor, Tensor] | None = None
        self.last_time = None

    def push(self, x_t: Tensor, t=None) -> Tensor:
        """One event: x_t (I,) or (B, I), its timestamp t (a number, or a (B,) tensor; None for
        a layer without a time gate) -> the top layer's output (D * H,) or (B, D * H).

        Timestamps must not decrease from one push to the next (as within a sequence)."""
        if not isinstance(x_t, Tensor) or x_t.dim() not in (1, 2):
            raise ValueError(f"x_t must be a tensor (I,) or (B, I), got "
                             f"{tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__}")
        unbatched = x_t.dim() == 1
        x = x_t.view(1, 1, -1) if unbatched else x_t.unsqueeze(1 if self.layer.batch_first else 0)
        times = None
        if t is not None:
            if isinstance(t, numbers.Real) and not isinstance(t, bool):
                t = float(t)
                if self.last_time is not None and t < self.last_time:
                    raise ValueError(f"timestamps must not decrease: {t} after {self.last_time}")
                times = torch.tensor([t], dtype=torch.float64)  # (1,): shared by the batch
            elif isinstance(t, Tensor):
                B = 1 if unbatched else x_t.shape[0]
                if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
                    raise ValueError(f"t must be a number or a tensor of shape () or ({B},), got {tuple(t.shape)}")
                if (self.last_time is not None and isinstance(self.last_time, Tensor)
                        and bool((t < self.last_time).any())):
                    raise ValueError(f"timestamps must not decrease: {t.tolist()} after {self.last_time.tolist()}")
                times = t.reshape(-1, 1) if t.dim() == 1 and t.shape[0] > 1 else t.reshape(1)
            else:
                raise TypeError(f"t must be a number or a tensor, got {type(t).__name__}")
        state = self.state
        if unbatched and state is not None:
            state = (state[0].unsqueeze(1), state[1].unsqueeze(1))
        with torch.no_grad():
            if isinstance(self.layer, torch.nn.LSTM):  # (it takes no times)
                out, state = self.layer(x, state)
            else:
                out, state = self.layer(x, state, times=times)
        if unbatched:
            state = (state[0][:, 0], state[1][:, 0])
        self.state = state
        if t is not None:
            self.last_time = t
        return out.reshape(-1) if unbatched else out.reshape(out.shape[0] * out.shape[1], -1)
