"""The reference loop as one scan over time: the same step functions and the same masking (past a
sequence's end the state is kept and the output is zero), no Python loop over T, so a traced
graph keeps one loop whatever the sequence length (ONNX's Scan)."""

from __future__ import annotations

import torch


def run(layer, steps, h, c, p):
    from torch._higher_order_ops.scan import scan

    x, lengths = steps.x, steps.lengths
    pre = layer._precompute(x, steps.times, p)
    T = x.shape[0]
    if lengths is None:
        valid = torch.ones(T, x.shape[1], 1, dtype=torch.bool, device=x.device)
    else:
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)

    def step(carry, xs):
        h, c = carry
        *pre_t, v = xs
        h_new, c_new = layer._cell(pre_t, h, c, p)
        return (torch.where(v, h_new, h), torch.where(v, c_new, c)), torch.where(v, h_new, torch.zeros_like(h_new))

    xs = tuple(q.contiguous() for q in pre) + (valid,)  # (an LN-LSTM's strided input fails ONNX export)
    (h, c), out = scan(step, (h[0].clone(), c[0].clone()), xs)  # scan's carry may not be a view
    return out, h.unsqueeze(0), c.unsqueeze(0)
