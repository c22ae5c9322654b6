"""The reference loop: the step functions of :mod:`phasedlstm.cells`, once per time step."""

from __future__ import annotations

import torch

from phasedlstm.paths import zero_padding


def run(layer, steps, h, c, p):
    lengths = steps.lengths
    x = zero_padding(steps.x, lengths)
    h, c = h[0], c[0]
    # unbind, not pre[t]: the backward of T separate selects would build T full-size zero
    # tensors (quadratic in T); unbind's backward stacks the step gradients once
    pre = [q.unbind(0) for q in layer._precompute(x, steps.times, p)]
    T, B = x.shape[0], x.shape[1]
    # Steps beyond every sequence's length change nothing: stop there, output zeros.
    T_run = T if lengths is None else int(lengths.max())
    t_full = T if lengths is None else int(lengths.min())  # steps valid for every sequence
    outputs = []
    for t in range(T_run):
        if t < t_full:
            h, c = layer._cell([q[t] for q in pre], h, c, p)  # q[t]: a tuple item, no autograd op
            outputs.append(h)
        else:  # some sequences have ended: step the others only; the ended keep their state, output zeros
            # (an ended sequence's padding takes no part in any number or gradient, NaN or inf included)
            rows = (t < lengths).nonzero().squeeze(1)
            h_rows, c_rows = layer._cell([q[t].index_select(0, rows) if q[t].shape[0] == B else q[t] for q in pre],
                                         h.index_select(0, rows), c.index_select(0, rows), p)
            h = h.index_copy(0, rows, h_rows)
            c = c.index_copy(0, rows, c_rows)
            outputs.append(torch.zeros_like(h).index_copy(0, rows, h_rows))
    out = torch.stack(outputs)  # (T_run, B, H)
    if T_run < T:
        out = torch.cat([out, out.new_zeros(T - T_run, B, out.shape[2])])
    return out, h.unsqueeze(0), c.unsqueeze(0)
