"""phasedlstm.LSTM with a torch.nn.LSTM state_dict equals torch.nn.LSTM: outputs, state, gradients."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from phasedlstm import LSTM


def _pair(num_layers, bidirectional, batch_first, dtype=torch.float64):
    ref = torch.nn.LSTM(3, 5, num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
    ours = LSTM(3, 5, num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
    ours.load_state_dict(ref.state_dict())  # unchanged: same names and shapes
    return ref, ours


def _grads(module, *tensors):
    return [p.grad.clone() for p in module.parameters()] + [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_equals_torch_lstm(num_layers, bidirectional, batch_first):
    ref, ours = _pair(num_layers, bidirectional, batch_first)
    D = 2 if bidirectional else 1
    shape = (4, 6, 3) if batch_first else (6, 4, 3)
    results = []
    for m in (ref, ours):
        torch.manual_seed(1)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64, requires_grad=True)
        out, (h, c) = m(x, (h0, c0))
        (out.sin().sum() + h.cos().sum() + (c * c).sum()).backward()
        results.append(([out, h, c], _grads(m, x, h0, c0)))
    (vals_r, grads_r), (vals_o, grads_o) = results
    for a, b in zip(vals_r + grads_r, vals_o + grads_o):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_equals_torch_lstm_float32_default_state():
    ref, ours = _pair(2, True, False, dtype=torch.float32)
    x = torch.randn(9, 3, 3)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), ours(x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c2, c1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_packed_sequence(bidirectional):
    """Our lengths semantics are torch's packed sequences: zero output past the end,
    h_n/c_n at the last valid step, the backward direction starting there."""
    ref, ours = _pair(2, bidirectional, True)
    lengths = torch.tensor([6, 2, 4, 1])
    results = []
    for packed in (True, False):
        torch.manual_seed(2)
        x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
        if packed:
            out, (h, c) = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
            m = ref
        else:
            out, (h, c) = ours(x, lengths=lengths)
            m = ours
        (out.sin().sum() + h.sum() + c.sum()).backward()
        results.append(([out, h, c], _grads(m, x)))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_unbatched_equals_torch():
    ref, ours = _pair(2, True, False)
    x = torch.randn(5, 3, dtype=torch.float64)
    h0 = torch.randn(4, 5, dtype=torch.float64)
    c0 = torch.randn(4, 5, dtype=torch.float64)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x, (h0, c0)), ours(x, (h0, c0))
    assert o2.shape == o1.shape == (5, 10) and h2.shape == h1.shape == (4, 5)
    for a, b in ((o1, o2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(b, a)


def test_parameter_names_match_torch():
    ref, ours = _pair(2, True, True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape


def test_forget_bias_init():
    torch_like = LSTM(3, 8, forget_bias=0.0)
    default = LSTM(3, 8)
    bound = 1 / 8**0.5
    assert torch_like.bias_ih_l0.abs().max() <= bound
    f = default.bias_ih_l0[8:16]
    assert ((f >= 1 - bound) & (f <= 1 + bound)).all()
    others = torch.cat([default.bias_ih_l0[:8], default.bias_ih_l0[16:]])
    assert others.abs().max() <= bound
