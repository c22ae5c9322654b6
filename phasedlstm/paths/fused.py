"""The fused native loop (csrc/lstm_forward.cpp, layernorm.cpp) with its hand-written backward."""

from __future__ import annotations

import torch

from phasedlstm import fast
from phasedlstm.paths import zero_padding


def run(layer, steps, h, c, p):
    x, lengths, h, c = steps.x, steps.lengths, h[0], c[0]
    if layer._kernel == "layernorm":
        x = zero_padding(x, lengths)  # (the kernel's dW_ih product would take 0 * inf from the padding)
        out, h, c = fast.layernorm_lstm(x, p["weight_ih"], p["ln_ih_weight"], p["bias_ih"], p["weight_hh"], h, c,
                                        p["ln_hh_weight"], p["bias_hh"], p["ln_c_weight"], p["ln_c_bias"], lengths)
    else:
        bias = None if p["bias_ih"] is None else p["bias_ih"] + p["bias_hh"]
        peep = (torch.stack([p["weight_ci"], p["weight_cf"], p["weight_co"]]) if p.get("weight_ci") is not None
                else None)
        k = gate(layer, steps, p) if "period" in p else None
        out, h, c = fast.lstm(x, p["weight_ih"], bias, p["weight_hh"], h, c, peep, k, lengths)
    return out, h.unsqueeze(0), c.unsqueeze(0)


def gate(layer, steps, p):
    """The time gate of every step: k (T, 1, H) when the batch shares its timestamps, else (T, B, H)."""
    times = steps.times[:, :1] if steps.shared else steps.times
    return fast.time_gate(times, *layer._time_parameters(p), layer._alpha)
