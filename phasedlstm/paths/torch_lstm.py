"""A plain LSTM's direction by torch's own LSTM (``torch._VF.lstm``, what torch.nn.LSTM runs) on
the same parameters: the same equations, gate order and projection, so the same numbers up to the
order of float sums. Sequences with ``lengths`` run packed, as torch.nn.LSTM runs a
PackedSequence: outputs past a sequence's end are zero and its state is the one at its last valid
step, as on every other path. Chosen by measurement (:mod:`phasedlstm.autotune`)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def run(layer, steps, h, c, p):
    x, lengths = steps.x, steps.lengths
    has_bias = p["bias_ih"] is not None
    weights = [p["weight_ih"], p["weight_hh"]] + ([p["bias_ih"], p["bias_hh"]] if has_bias else [])
    if p.get("weight_hr") is not None:
        weights.append(p["weight_hr"])
    if lengths is None or int(lengths.min()) >= x.shape[0]:
        out, h_n, c_n = torch._VF.lstm(x, (h, c), weights, has_bias, 1, 0.0, layer.training, False, False)
        return out, h_n, c_n
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    out, h_n, c_n = torch._VF.lstm(packed.data, packed.batch_sizes, (h.index_select(1, order), c.index_select(1, order)),
                                   weights, has_bias, 1, 0.0, layer.training, False)
    out, _ = pad_packed_sequence(packed._replace(data=out), total_length=x.shape[0])
    return out, h_n.index_select(1, back), c_n.index_select(1, back)
