"""The reference loop: the step functions of :mod:`phasedlstm.cells`, once per time step."""

from __future__ import annotations

from phasedlstm.paths import step_loop, zero_padding


def run(layer, steps, h, c, p):
    lengths = steps.lengths
    x = zero_padding(steps.x, lengths)
    # unbind, not pre[t]: the backward of T separate selects would build T full-size zero
    # tensors (quadratic in T); unbind's backward stacks the step gradients once
    pre = [q.unbind(0) for q in layer._precompute(x, steps.times, p)]
    B = x.shape[1]

    def step(t, rows, h, c):
        if rows is None:
            return layer._cell([q[t] for q in pre], h, c, p)  # q[t]: a tuple item, no autograd op
        return layer._cell([q[t].index_select(0, rows) if q[t].shape[0] == B else q[t] for q in pre], h, c, p)

    out, h, c = step_loop(x.shape[0], lengths, h[0], c[0], step)
    return out, h.unsqueeze(0), c.unsqueeze(0)
