"""A plain LSTM's direction by torch's own LSTM (``torch._VF.lstm``, what torch.nn.LSTM runs) on
the same parameters: the same equations, gate order and projection, so the same numbers up to the
order of float sums. Sequences with ``lengths`` run packed, as torch.nn.LSTM runs a
PackedSequence: outputs past a sequence's end are zero and its state is the one at its last valid
step, as on every other path. Chosen by measurement (:mod:`phasedlstm.autotune`).

:func:`run` is one layer and direction; :func:`run_stack` is every layer and direction in one call,
as torch.nn.LSTM makes it (oneDNN then runs the layers as one primitive, which a call per layer
does not match at several layers). The stack takes dropout between layers from torch, whose masks
are drawn in another order than the layer's own, so it serves only calls without dropout."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _weights(p) -> list:
    """One layer and direction's parameters in torch's order (w_ih, w_hh[, b_ih, b_hh][, w_hr])."""
    weights = [p["weight_ih"], p["weight_hh"]]
    if p["bias_ih"] is not None:
        weights += [p["bias_ih"], p["bias_hh"]]
    if p.get("weight_hr") is not None:
        weights.append(p["weight_hr"])
    return weights


def _lstm(layer, steps, h, c, weights, num_layers, bidirectional):
    x, lengths = steps.x, steps.lengths
    has_bias = layer.bias
    if lengths is None or int(lengths.min()) >= x.shape[0]:
        out, h_n, c_n = torch._VF.lstm(x, (h, c), weights, has_bias, num_layers, 0.0, layer.training,
                                       bidirectional, False)
        return out, h_n, c_n
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    out, h_n, c_n = torch._VF.lstm(packed.data, packed.batch_sizes, (h.index_select(1, order), c.index_select(1, order)),
                                   weights, has_bias, num_layers, 0.0, layer.training, bidirectional)
    out, _ = pad_packed_sequence(packed._replace(data=out), total_length=x.shape[0])
    return out, h_n.index_select(1, back), c_n.index_select(1, back)


def run(layer, steps, h, c, p):
    return _lstm(layer, steps, h, c, _weights(p), 1, False)


def run_stack(layer, steps, h0, c0):
    """Every layer and direction of ``layer`` (no dropout between layers) -> output (T, B, D * H'),
    h_n, c_n (L * D, B, ...)."""
    D = 2 if layer.bidirectional else 1
    weights = [w for i in range(layer.num_layers) for d in range(D) for w in _weights(layer.params(i, d))]
    return _lstm(layer, steps, h0, c0, weights, layer.num_layers, layer.bidirectional)


run_stack.whole_stack = True
