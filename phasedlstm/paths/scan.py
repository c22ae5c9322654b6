"""The reference loop as one scan over time: the same step functions and the same masking (past a
sequence's end the state is kept and the output is zero), no Python loop over T, so a traced
graph keeps one loop whatever the sequence length (ONNX's Scan).

Everything that does not depend on the state is done outside the loop, where it runs once over all
steps rather than once per step: the input terms and the time gate (``_precompute``), zeroing the
padding, and zeroing the outputs past each sequence's end. A layer with a time gate takes the
validity of a step as part of its gate (k = 0 past the end keeps h and c exactly, as a closed gate
does), so its loop body has no masking at all.
"""

from __future__ import annotations

import torch

from phasedlstm.paths import zero_padding


def run(layer, steps, h, c, p):
    from torch._higher_order_ops.scan import scan

    x, lengths = steps.x, steps.lengths
    T = x.shape[0]
    if lengths is None:
        valid = torch.ones(T, x.shape[1], 1, dtype=torch.bool, device=x.device)
    else:
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)
    pre = list(layer._precompute(zero_padding(x, lengths), steps.times, p))
    gated = layer._has_time_gate
    if gated:  # k (T, B, H), the last term: 0 past each sequence's end
        pre[-1] = torch.where(valid, pre[-1], torch.zeros((), dtype=pre[-1].dtype, device=x.device))

    def step(carry, xs):
        h, c = carry
        if gated:
            h, c = layer._cell(list(xs), h, c, p)
            return (h, c), h.clone()  # (scan's outputs may not alias its carry)
        *pre_t, v = xs
        h_new, c_new = layer._cell(pre_t, h, c, p)
        h, c = torch.where(v, h_new, h), torch.where(v, c_new, c)
        return (h, c), h.clone()

    # (contiguous: an LN-LSTM's strided input fails ONNX export)
    xs = tuple(q.contiguous() for q in pre) + (() if gated else (valid,))
    (h, c), out = scan(step, (h[0].clone(), c[0].clone()), xs)  # scan's carry may not be a view
    out = torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=x.device))
    return out, h.unsqueeze(0), c.unsqueeze(0)
