"""The BN-LSTM's loops (:class:`phasedlstm.layers.BatchNormLSTM`) with the statistics of each time
step: the reference loop (:func:`run`) and the fused native loop (:func:`run_fused`,
csrc/batchnorm.cpp, with its hand-written backward). Both compute the input products x_t W_ih^T of
all steps before the loop; the reference loop normalises them there too, the fused loop per step.

In training, each step normalises with the batch statistics of the sequences still running at
that step (padding takes no part) and moves that step's population statistics towards them; at
evaluation it normalises with the population statistics of its step, the last kept step's for
every step beyond ``max_length``. The step index counts from the start of each call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phasedlstm import fast
from phasedlstm.cells import BN_EPS, BN_MOMENTUM, batchnorm_step
from phasedlstm.paths import step_loop, zero_padding


def _input_stats(wx, lengths):
    """Per step, the mean and biased variance of W_ih x over the sequences valid at that step, and
    their number: (T, 4H), (T, 4H), (T,)."""
    T, B = wx.shape[:2]
    if lengths is None:
        mean = wx.mean(1)  # (two passes: a third of var_mean's time over the middle dimension)
        return mean, (wx - mean.unsqueeze(1)).square().mean(1), torch.full((T,), B, device=wx.device)
    valid = torch.arange(T, device=wx.device)[:, None] < lengths[None, :]  # (T, B)
    n = valid.sum(1)
    w = valid.unsqueeze(2).to(wx.dtype)
    mean = (wx * w).sum(1) / n.clamp(min=1).unsqueeze(1).to(wx.dtype)
    var = (((wx - mean.unsqueeze(1)) * w) ** 2).sum(1) / n.clamp(min=1).unsqueeze(1).to(wx.dtype)
    return mean, var, n


@torch.no_grad()
def _update_stats(p, name, slot, mean, var, n):
    """Move each step's slot of the population statistics ``name`` ("bn_ih", "bn_hh", "bn_c") towards
    the batch's (mean and biased variance per step, over n sequences), in step order (the steps past
    max_length share the last slot), the variance unbiased."""
    n = n.to(var.dtype)
    unbiased = var * (n / (n - 1).clamp(min=1)).unsqueeze(1)
    first = min(len(slot), slot[-1])  # steps 0 .. first-1 each have a slot of their own
    for buf, value, ok in ((p[name + "_mean"], mean, n >= 1), (p[name + "_var"], unbiased, n >= 2)):
        k = torch.arange(first, device=buf.device)[ok[:first]]
        buf[k] = buf[k] * (1 - BN_MOMENTUM) + value[k] * BN_MOMENTUM
        for t in range(first, len(slot)):
            if ok[t]:
                buf[slot[t]].mul_(1 - BN_MOMENTUM).add_(value[t], alpha=BN_MOMENTUM)


def _slots(p, T, lengths):
    """The steps up to the longest sequence's end, T_run, and the population statistics' slot of each
    (every step from max_length - 1 on shares the last)."""
    last = p["bn_ih_mean"].shape[0] - 1
    T_run = T if lengths is None else int(lengths.max())
    return [min(t, last) for t in range(T_run)], T_run


def _input_term(layer, x, lengths, p):
    """BN_ih(W_ih x_t) + b_ih of the steps up to the longest sequence's end (T_run, B, 4H), the
    population statistics' slot of each of those steps, and T_run; in training the input term's
    population statistics move towards the batch's."""
    slot, T_run = _slots(p, x.shape[0], lengths)
    wx = F.linear(x[:T_run], p["weight_ih"])  # (T_run, B, 4H)
    if layer.training:
        m_ih, v_ih, n = _input_stats(wx, lengths)
        _update_stats(p, "bn_ih", slot, m_ih, v_ih, n)
    else:
        idx = torch.tensor(slot, device=x.device, dtype=torch.long)
        m_ih, v_ih = p["bn_ih_mean"][idx], p["bn_ih_var"][idx]
    xw = ((wx - m_ih.unsqueeze(1)) * torch.rsqrt(v_ih.unsqueeze(1) + BN_EPS) * p["bn_ih_weight"])
    if p["bias_ih"] is not None:
        xw = xw + p["bias_ih"]
    return xw, slot, T_run


def run(layer, steps, h, c, p):
    lengths = steps.lengths
    x = zero_padding(steps.x, lengths)
    T = x.shape[0]
    h, c = h[0], c[0]
    training = layer.training
    xw, slot, _ = _input_term(layer, x, lengths, p)
    xw = xw.unbind(0)

    def step(t, rows, h, c):
        k = slot[t]
        stats_hh = p["bn_hh_mean"][k], p["bn_hh_var"][k]  # (views: training moves them in place)
        stats_c = p["bn_c_mean"][k], p["bn_c_var"][k]
        xw_t = xw[t] if rows is None else xw[t].index_select(0, rows)  # (ended sequences: not in the statistics)
        return batchnorm_step(xw_t, h, c, p["weight_hh"], p["bias_hh"], p["bn_hh_weight"], p["bn_c_weight"],
                              p["bn_c_bias"], stats_hh, stats_c, training)

    out, h, c = step_loop(T, lengths, h, c, step)
    return out, h.unsqueeze(0), c.unsqueeze(0)


def run_fused(layer, steps, h, c, p):
    lengths = steps.lengths
    x = zero_padding(steps.x, lengths)
    T, B = x.shape[:2]
    slot, T_run = _slots(p, T, lengths)
    H = p["weight_hh"].shape[1]
    population = None
    if not layer.training:
        idx = torch.tensor(slot, device=x.device, dtype=torch.long)
        population = torch.cat([p[name][idx] for name in _STATS], 1)
    wx = F.linear(x[:T_run], p["weight_ih"])  # (T_run, B, 4H); normalised inside the loop
    out, h, c, stats, n = fast.batchnorm_lstm(wx, p["weight_hh"], p["bn_ih_weight"], p["bias_ih"], p["bn_hh_weight"],
                                              p["bias_hh"], p["bn_c_weight"], p["bn_c_bias"], h[0], c[0], lengths,
                                              population, BN_EPS)
    if layer.training:
        for name, at, width in (("bn_ih", 0, 4 * H), ("bn_hh", 8 * H, 4 * H), ("bn_c", 16 * H, H)):
            _update_stats(p, name, slot, stats[:, at:at + width], stats[:, at + width:at + 2 * width], n)
    if T_run < T:
        out = torch.cat([out, out.new_zeros(T - T_run, B, out.shape[2])])
    return out, h.unsqueeze(0), c.unsqueeze(0)


#: the population statistics in the fused kernel's order (its ``population`` and batch statistics)
_STATS = ("bn_ih_mean", "bn_ih_var", "bn_hh_mean", "bn_hh_var", "bn_c_mean", "bn_c_var")
