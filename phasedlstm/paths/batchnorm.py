"""The BN-LSTM's loop (:class:`phasedlstm.layers.BatchNormLSTM`): the reference loop with the
statistics of each time step.

In training, each step normalises with the batch statistics of the sequences still running at
that step (padding takes no part) and moves that step's population statistics towards them; at
evaluation it normalises with the population statistics of its step, the last kept step's for
every step beyond ``max_length``. The step index counts from the start of each call.
"""

from __future__ import annotations

import torch

from phasedlstm.cells import BN_MOMENTUM, batch_norm, batchnorm_step
from phasedlstm.paths import zero_padding


def _input_stats(wx, lengths):
    """Per step, the mean and biased variance of W_ih x over the sequences valid at that step:
    (T, 4H) each."""
    if lengths is None:
        return wx.mean(1), wx.var(1, unbiased=False)
    valid = (torch.arange(wx.shape[0], device=wx.device)[:, None] < lengths[None, :]).unsqueeze(2).to(wx.dtype)
    n = valid.sum(1).clamp(min=1)  # (T, 1)
    mean = (wx * valid).sum(1) / n
    var = (((wx - mean.unsqueeze(1)) * valid) ** 2).sum(1) / n
    return mean, var


@torch.no_grad()
def _update(running, k, stats, n):
    """Move slot ``k`` of the running (mean, var) buffers towards this batch's statistics over n rows
    (the variance unbiased, as torch.nn.BatchNorm1d keeps it)."""
    for buf, value, unbias in zip(running, stats, (1.0, n / (n - 1) if n > 1 else 1.0)):
        buf[k].mul_(1.0 - BN_MOMENTUM).add_(value.detach() * unbias, alpha=BN_MOMENTUM)


def run(layer, steps, h, c, p):
    lengths = steps.lengths
    x = zero_padding(steps.x, lengths)
    T, B = x.shape[0], x.shape[1]
    h, c = h[0], c[0]
    training = layer.training
    last = p["bn_ih_mean"].shape[0] - 1  # the slot of every step from max_length - 1 on
    slot = [min(t, last) for t in range(T)]
    wx = torch.nn.functional.linear(x, p["weight_ih"])  # (T, B, 4H)
    if training:
        m_ih, v_ih = _input_stats(wx, lengths)
    else:
        idx = torch.tensor(slot, device=x.device)
        m_ih, v_ih = p["bn_ih_mean"][idx], p["bn_ih_var"][idx]
    xw = batch_norm(wx, p["bn_ih_weight"], p["bias_ih"], m_ih.unsqueeze(1), v_ih.unsqueeze(1)).unbind(0)
    T_run = T if lengths is None else int(lengths.max())
    t_full = T if lengths is None else int(lengths.min())
    outputs = []
    for t in range(T_run):
        k = slot[t]
        population = None if training else (p["bn_hh_mean"][k], p["bn_hh_var"][k], p["bn_c_mean"][k], p["bn_c_var"][k])
        rows = None if t < t_full else (t < lengths).nonzero().squeeze(1)
        h_in, c_in, xw_t = (h, c, xw[t]) if rows is None else (h[rows], c[rows], xw[t][rows])
        h_t, c_t, stats = batchnorm_step(xw_t, h_in, c_in, p["weight_hh"], p["bias_hh"], p["bn_hh_weight"],
                                         p["bn_c_weight"], p["bn_c_bias"], population)
        if training:
            n = B if rows is None else int(rows.numel())
            _update((p["bn_ih_mean"], p["bn_ih_var"]), k, (m_ih[t], v_ih[t]), n)
            _update((p["bn_hh_mean"], p["bn_hh_var"]), k, stats[:2], n)
            _update((p["bn_c_mean"], p["bn_c_var"]), k, stats[2:], n)
        if rows is None:
            h, c = h_t, c_t
            outputs.append(h)
        else:  # ended sequences keep their state and output zeros
            h = h.index_copy(0, rows, h_t)
            c = c.index_copy(0, rows, c_t)
            outputs.append(torch.zeros_like(h).index_copy(0, rows, h_t))
    out = torch.stack(outputs)
    if T_run < T:
        out = torch.cat([out, out.new_zeros(T - T_run, B, out.shape[2])])
    return out, h.unsqueeze(0), c.unsqueeze(0)
