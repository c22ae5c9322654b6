"""The ways a layer runs one direction over all its steps. Each is a function with one signature,

    run(layer, steps, h, c, p) -> (output (T, B, H'), h_n (1, B, H'), c_n (1, B, H))

where ``steps`` is :class:`Steps` (the direction's input, time-major), ``h`` (1, B, H') and ``c``
(1, B, H) its initial state (that layer and direction's slice of the stacked state) and ``p`` the parameters of that layer and direction by base name (``weight_ih``,
``period``, ...). The layer chooses one per call (:meth:`phasedlstm.layers.RecurrentLayer._path`):

- :mod:`.reference`: the step functions of :mod:`phasedlstm.cells`, once per step: any device and
  dtype, any derivative;
- :mod:`.scan`: the same steps inside torch's scan operator, one loop node in a traced graph (what
  the ONNX export uses);
- :mod:`.onnx_lstm`: a plain or peephole LSTM as one operator that the ONNX export writes as
  ONNX's own LSTM;
- :mod:`.fused`: the fused native loop with its hand-written backward (CPU, float32 and float64);
- :mod:`.infer`: inference without gradients, the time gate inside the loop; a Phased LSTM at
  evaluation computes only its open units. Where its kernel declines, the fused loop runs;
- :mod:`.batchnorm`: the BN-LSTM's loops, reference and fused (csrc/batchnorm.cpp), with per-step
  batch or population statistics;
- :mod:`.torch_lstm`: a plain LSTM by torch's own LSTM on the same parameters, where
  :mod:`phasedlstm.autotune` measured it faster than the layer's own path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from phasedlstm._checks import tracing


class Steps(NamedTuple):
    """One direction's input over all steps, as every path takes it."""

    #: (T, B, I)
    x: Tensor
    #: float64 timestamps (T, B); when ``shared`` every column is the same (a view of one column).
    #: On the one-step streaming path (paths.infer.stream) they are the caller's, in the inference
    #: kernel's forms: (1,) shared, (B, 1), or None for the step index
    times: Tensor | None
    #: whether the batch shares its timestamps (their time gate is then computed once)
    shared: bool
    #: (B,) int64 for a batch padded at the end, or None (every step valid)
    lengths: Tensor | None
    #: [unit-steps computed, unit-steps valid] of the call's sparse inference, added to by paths.infer
    open_counts: list


def zero_padding(x: Tensor, lengths: Tensor | None) -> Tensor:
    """x (T, B, I) with the steps past each sequence's end set to 0, so that the padding takes no
    part in any number or gradient (an inf or NaN there included); x itself where nothing is padded."""
    if lengths is None or (not tracing() and int(lengths.min()) >= x.shape[0]):  # (a traced graph always masks)
        return x
    valid = torch.arange(x.shape[0], device=x.device)[:, None] < lengths.to(x.device)[None, :]
    return torch.where(valid.unsqueeze(2), x, torch.zeros((), dtype=x.dtype, device=x.device))


def step_loop(T: int, lengths: Tensor | None, h: Tensor, c: Tensor, step):
    """A step function over T steps with the masking of the step-by-step paths: steps beyond every
    sequence's length are not run (their output is zero); at a step that some sequences have passed,
    only the others step, and the ended keep their state and output zero (their padding takes no
    part in any number or gradient, NaN or inf included). ``step(t, rows, h, c) -> (h, c)`` gets the
    rows still running (None: all of them) and their state (B', H'), (B', H).
    -> output (T, B, H'), h_n, c_n (B, ...)."""
    B = h.shape[0]
    T_run = T if lengths is None else int(lengths.max())
    t_full = T if lengths is None else int(lengths.min())  # steps valid for every sequence
    outputs = []
    for t in range(T_run):
        if t < t_full:
            h, c = step(t, None, h, c)
            outputs.append(h)
        else:
            rows = (t < lengths).nonzero().squeeze(1)
            h_rows, c_rows = step(t, rows, h.index_select(0, rows), c.index_select(0, rows))
            h = h.index_copy(0, rows, h_rows)
            c = c.index_copy(0, rows, c_rows)
            outputs.append(torch.zeros_like(h).index_copy(0, rows, h_rows))
    out = torch.stack(outputs)  # (T_run, B, H')
    if T_run < T:
        out = torch.cat([out, out.new_zeros(T - T_run, B, out.shape[2])])
    return out, h, c


class Declined(Exception):
    """A path that cannot serve this call (the one-step streaming path: the general forward runs)."""


from phasedlstm.paths import batchnorm, fused, infer, onnx_lstm, reference, scan, torch_lstm  # noqa: E402,F401  (after Steps, which they use)
