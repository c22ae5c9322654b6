"""The reference loop: the step functions of :mod:`phasedlstm.cells`, once per time step."""

from __future__ import annotations

import torch


def run(layer, steps, h, c, p):
    x, lengths = steps.x, steps.lengths
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
        h_new, c_new = layer._cell([q[t] for q in pre], h, c, p)  # q[t]: a tuple item, no autograd op
        if t < t_full:
            h, c = h_new, c_new
            outputs.append(h)
        else:  # some sequences have ended: keep their state, output zeros
            valid = (t < lengths).unsqueeze(1)  # (B, 1)
            h = torch.where(valid, h_new, h)
            c = torch.where(valid, c_new, c)
            outputs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    out = torch.stack(outputs)  # (T_run, B, H)
    if T_run < T:
        out = torch.cat([out, out.new_zeros(T - T_run, B, out.shape[2])])
    return out, h.unsqueeze(0), c.unsqueeze(0)
