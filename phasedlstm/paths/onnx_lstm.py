"""A plain or peephole LSTM direction as one operator, ``phasedlstm_onnx::lstm``, which the ONNX
export writes as ONNX's own LSTM operator (:data:`TRANSLATIONS`): ONNX Runtime then runs its
native LSTM kernel instead of the reference equations inside a Scan.

The operator takes ONNX's layout (gates in the order input, output, forget, cell; both biases in
one (8H,) vector; peepholes in the order input, output, forget) and ONNX's semantics, which are
this library's: the output gate peeks at the new cell state, a sequence's steps past its length
output zero and leave its state as it was. Its eager implementation is those equations in
PyTorch (what torch.export traces through); it has no derivative (the path is for export).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: torch's gate order (input, forget, cell, output) -> ONNX's (input, output, forget, cell)
_IOFC = (0, 3, 1, 2)


@torch.library.custom_op("phasedlstm_onnx::lstm", mutates_args=())
def lstm(x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, w: Tensor, r: Tensor, b: Tensor | None,
         p: Tensor | None, hidden_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX's LSTM, one forward direction: x (T, B, I), lengths (B,), h0 and c0 (B, H), w (4H, I),
    r (4H, H), b (8H,) and p (3H,) in ONNX's orders -> y (T, B, H), h_n, c_n (B, H)."""
    H = hidden_size
    bias = 0 if b is None else b[:4 * H] + b[4 * H:]
    p_i, p_o, p_f = (None, None, None) if p is None else p.split(H)
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        a_i, a_o, a_f, a_c = (x[t] @ w.T + h @ r.T + bias).split(H, dim=1)
        i = torch.sigmoid(a_i if p_i is None else a_i + p_i * c)
        f = torch.sigmoid(a_f if p_f is None else a_f + p_f * c)
        c_new = f * c + i * torch.tanh(a_c)
        o = torch.sigmoid(a_o if p_o is None else a_o + p_o * c_new)
        h_new = o * torch.tanh(c_new)
        valid = (t < lengths).unsqueeze(1)
        h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
        outs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    return torch.stack(outs), h.clone(), c.clone()


@lstm.register_fake
def _(x, lengths, h0, c0, w, r, b, p, hidden_size):
    T, B = x.shape[0], x.shape[1]
    return x.new_empty(T, B, hidden_size), x.new_empty(B, hidden_size), x.new_empty(B, hidden_size)


def _onnx_lstm(x, lengths, h0, c0, w, r, b, p, hidden_size: int):
    """The ONNX graph of :func:`lstm`: ONNX's LSTM with its direction and layer axes."""
    from onnxscript import opset18 as op

    Y, Y_h, Y_c = op.LSTM(x, op.Unsqueeze(w, [0]), op.Unsqueeze(r, [0]), None if b is None else op.Unsqueeze(b, [0]),
                          op.Cast(lengths, to=6), op.Unsqueeze(h0, [0]), op.Unsqueeze(c0, [0]),  # (6: int32)
                          None if p is None else op.Unsqueeze(p, [0]), hidden_size=hidden_size)
    return op.Squeeze(Y, [1]), op.Squeeze(Y_h, [0]), op.Squeeze(Y_c, [0])


#: what torch.onnx.export needs to write the operator (its ``custom_translation_table``)
TRANSLATIONS = {torch.ops.phasedlstm_onnx.lstm.default: _onnx_lstm}


def _iofc(t: Tensor) -> Tensor:
    return torch.cat([t.chunk(4, 0)[k] for k in _IOFC])


def run(layer, steps, h, c, p):
    x, lengths = steps.x, steps.lengths
    T, B = x.shape[0], x.shape[1]
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=x.device)
    b = None
    if p["bias_ih"] is not None:
        b = torch.cat([_iofc(p["bias_ih"]), _iofc(p["bias_hh"])])
    peep = None
    if p.get("weight_ci") is not None:
        peep = torch.cat([p["weight_ci"], p["weight_co"], p["weight_cf"]])
    out, h_n, c_n = lstm(x, lengths, h[0], c[0], _iofc(p["weight_ih"]), _iofc(p["weight_hh"]), b, peep,
                         layer.hidden_size)
    return out, h_n.unsqueeze(0), c_n.unsqueeze(0)
