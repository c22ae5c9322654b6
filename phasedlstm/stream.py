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
        if getattr(layer, "bidirectional", False):
            raise ValueError("Stream needs a unidirectional layer: a bidirectional layer's backward direction "
                             "reads the events after each one, which a stream does not have yet")
        from phasedlstm.layers import BatchNormLSTM

        if isinstance(layer, BatchNormLSTM):
            raise ValueError("Stream cannot feed a BatchNormLSTM one event at a time: its statistics are per "
                             "time step of a call, and every push would be step 0; run it on whole sequences")
        self.layer = layer
        self.reset()

    def reset(self) -> None:
        """Forget the state and the last timestamp: the next push starts a new sequence."""
        self.state: tuple[Tensor, Tensor] | None = None
        self.last_time: Tensor | None = None

    def _time(self, t, B: int) -> Tensor:
        """The timestamp of one push as a tensor of its own (a copy: a caller's tensor written later
        does not move it), shape (1,) shared by the batch or (B,); integers stay integers, so int64
        nanoseconds compare exactly."""
        if isinstance(t, bool) or not isinstance(t, (numbers.Real, Tensor)):
            raise TypeError(f"t must be a number or a tensor, got {type(t).__name__}")
        if isinstance(t, Tensor):
            if t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"t must be a real number or a float/int tensor, got dtype {t.dtype}")
            if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
                raise ValueError(f"t must be a number or a tensor of shape () or ({B},), got {tuple(t.shape)}")
            t = t.detach().to("cpu", copy=True).reshape(-1)
        elif isinstance(t, numbers.Integral):
            t = torch.tensor([int(t)], dtype=torch.int64)
        else:
            t = torch.tensor([float(t)], dtype=torch.float64)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"timestamps must be finite, got {t.tolist()}")
        return t

    def push(self, x_t: Tensor, t=None) -> Tensor:
        """One event: x_t (I,) or (B, I), its timestamp t (a number — int, float or a NumPy scalar —
        or a tensor of shape (), (1,) or (B,)) -> the top layer's output (D * H,) or (B, D * H).

        Timestamps must not decrease from one push to the next (as within a sequence); every form
        of t is checked the same way, and kept by value. A layer with a time gate (the Phased LSTM)
        needs t at every push; for the others t may be None."""
        if not isinstance(x_t, Tensor) or x_t.dim() not in (1, 2):
            raise ValueError(f"x_t must be a tensor (I,) or (B, I), got "
                             f"{tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__}")
        unbatched = x_t.dim() == 1
        B = 1 if unbatched else x_t.shape[0]
        x = x_t.view(1, 1, -1) if unbatched else x_t.unsqueeze(1 if self.layer.batch_first else 0)
        times = None
        if t is None:
            if getattr(self.layer, "_has_time_gate", False):
                raise ValueError("t is required at every push for a layer with a time gate (the Phased LSTM): "
                                 "its gate is a function of the event's time")
        else:
            t = self._time(t, B)
            last = self.last_time
            if last is not None:
                both_int = not t.is_floating_point() and not last.is_floating_point()
                now, before = (t, last) if both_int else (t.double(), last.double())
                if bool((now < before).any()):
                    raise ValueError(f"timestamps must not decrease: {t.tolist()} after {last.tolist()}")
            times = (t.reshape(-1, 1) if t.shape[0] > 1 else t).to(x.device)  # (B, 1) per sample, or (1,) shared
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
