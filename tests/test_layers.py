"""The sequence layers: equal to stepping their cell by hand, streaming, lengths, directions, options."""

import pytest
import torch

from phasedlstm import (
    LSTM,
    LayerNormLSTM,
    LayerNormLSTMCell,
    LSTMCell,
    PeepholeLSTM,
    PeepholeLSTMCell,
    PhasedLSTM,
    PhasedLSTMCell,
)

LAYERS = {
    "lstm": (LSTM, LSTMCell),
    "peephole": (PeepholeLSTM, PeepholeLSTMCell),
    "phased": (PhasedLSTM, PhasedLSTMCell),
    "layernorm": (LayerNormLSTM, LayerNormLSTMCell),
}
B, T, I, H = 3, 7, 4, 5
F64 = torch.float64


def _layer(kind, **kw):
    kw.setdefault("dtype", F64)
    kw.setdefault("batch_first", True)
    if kind == "phased":
        kw.setdefault("r_on", 0.5)  # a wide open phase so the state moves a lot in few steps
        kw.setdefault("period_init", (1.0, 2.5))
    return LAYERS[kind][0](I, H, **kw)


def _times(b=B, t=T, start=0.0):
    return start + torch.rand(b, t, dtype=F64).mul(1.5).add(0.05).cumsum(1)


def _cell_from_layer(layer, k, direction=0):
    """A cell holding the parameters of one layer and direction."""
    kind = next(name for name, (cls, _) in LAYERS.items() if type(layer) is cls)
    cell_cls = LAYERS[kind][1]
    in_size = layer.input_size if k == 0 else layer.hidden_size * (2 if layer.bidirectional else 1)
    kw = {"r_on": 0.5} if kind == "phased" else {}
    cell = cell_cls(in_size, layer.hidden_size, dtype=F64, **kw)
    cell.load_state_dict({n: p for n, p in layer.params(k, direction).items() if p is not None})
    return cell.train(layer.training)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_layer_equals_stepping_cells_by_hand(kind, training):
    layer = _layer(kind, num_layers=2, bidirectional=True).train(training)
    x, times = torch.randn(B, T, I, dtype=F64), _times()
    out, (h_n, c_n) = layer(x, times=times)

    inp = x
    for k in range(2):
        outs = []
        for d in range(2):
            cell = _cell_from_layer(layer, k, d)
            steps = range(T) if d == 0 else reversed(range(T))
            state, hs = None, [None] * T
            for t in steps:
                kw = {"time": times[:, t]} if kind == "phased" else {}
                state = cell(inp[:, t], state, **kw)
                hs[t] = state[0]
            outs.append(torch.stack(hs, 1))
            torch.testing.assert_close(h_n[2 * k + d], state[0])
            torch.testing.assert_close(c_n[2 * k + d], state[1])
        inp = torch.cat(outs, 2)
    torch.testing.assert_close(out, inp)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_streaming_in_chunks_equals_one_call(kind):
    layer = _layer(kind, num_layers=2)
    x, times = torch.randn(B, 10, I, dtype=F64), _times(t=10)
    full, (h_full, c_full) = layer(x, times=times)
    first, hx = layer(x[:, :4], times=times[:, :4])
    second, (h2, c2) = layer(x[:, 4:], hx, times=times[:, 4:])
    torch.testing.assert_close(torch.cat([first, second], 1), full)
    torch.testing.assert_close(h2, h_full)
    torch.testing.assert_close(c2, c_full)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_changes_nothing_in_the_valid_part(kind, bidirectional):
    layer = _layer(kind, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([7, 3, 5])
    x, times = torch.randn(B, T, I, dtype=F64, requires_grad=True), _times()
    out, (h_n, c_n) = layer(x, times=times, lengths=lengths)
    out.sum().backward()
    assert x.grad[1, 3:].abs().max() == 0  # padding does not influence anything
    for b, n in enumerate(lengths.tolist()):
        alone, (h_a, c_a) = layer(x[b : b + 1, :n], times=times[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1, :n], alone)
        assert out[b, n:].abs().max() == 0 if n < T else True
        torch.testing.assert_close(h_n[:, b], h_a[:, 0])
        torch.testing.assert_close(c_n[:, b], c_a[:, 0])
    # what the padding holds does not matter
    x2 = x.detach().clone()
    x2[1, 3:] = 1e3
    out2, _ = layer(x2, times=times, lengths=lengths)
    torch.testing.assert_close(out2, out)


@pytest.mark.parametrize("kind", ["lstm", "peephole", "layernorm"])  # phased: stepped by hand above
def test_reverse_direction_is_forward_on_reversed_sequence(kind):
    bi = _layer(kind, bidirectional=True)
    fwd = _layer(kind)
    fwd.load_state_dict({k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "_reverse" in k})
    x = torch.randn(B, T, I, dtype=F64)
    out, (h_n, _) = bi(x)
    out_r, (h_r, _) = fwd(x.flip(1))
    torch.testing.assert_close(out[..., H:], out_r.flip(1))
    torch.testing.assert_close(h_n[1], h_r[0])


def test_times_shared_by_batch_and_default_step_index():
    layer = _layer("phased")
    x = torch.randn(B, T, I, dtype=F64)
    shared = torch.arange(T, dtype=F64)
    a, _ = layer(x)
    b, _ = layer(x, times=shared)
    c, _ = layer(x, times=shared.expand(B, T))
    d, _ = layer(x, times=torch.arange(T))  # integer timestamps are fine
    for other in (b, c, d):
        torch.testing.assert_close(other, a)


def test_times_reach_every_layer():
    """Changing the timestamps changes the second layer's gate too (not only the first's)."""
    layer = _layer("phased", num_layers=2)
    x, times = torch.randn(B, T, I, dtype=F64), _times()
    _, (h1, _) = layer(x, times=times)
    _, (h2, _) = layer(x, times=times + 0.37)
    assert (h1[1] - h2[1]).abs().max() > 1e-6


def test_phased_layer_float32_timestamps_precision_warning():
    layer = PhasedLSTM(I, H, batch_first=True)
    x = torch.randn(1, 3, I)
    with pytest.warns(UserWarning, match="float64"):
        layer(x, times=torch.tensor([1.7e9, 1.7e9 + 1, 1.7e9 + 2], dtype=torch.float32))


def test_large_timestamps_float64_give_same_output_as_small():
    layer = PhasedLSTM(I, H, batch_first=True, dtype=F64)
    with torch.no_grad():
        layer.period_l0.copy_(torch.tensor([2.0, 4.0, 8.0, 16.0, 0.5], dtype=F64))
    x = torch.randn(B, T, I, dtype=F64)
    t = _times()
    base = 2.0**30  # ~1.07e9, a multiple of every period: the phases are unchanged
    a, _ = layer(x, times=t)
    b, _ = layer(x, times=t + base)
    # float64 spacing at 2**30 is 2.4e-7: that rounding of t + base is all that may differ
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    c, _ = layer(x, times=t + base + 0.25)  # and a real shift is seen
    assert (c - a).abs().max() > 1e-3


def test_eval_mode_switches_leak_off():
    layer = _layer("phased").eval()
    k = layer.time_gates(torch.linspace(0, 50, 200, dtype=F64))
    assert (k == 0).any() and k.min() == 0
    assert layer.train().time_gates(torch.linspace(0, 50, 200, dtype=F64)).min() > 0


def test_freezing_time_parameters():
    layer = PhasedLSTM(I, H, num_layers=2, learn_period=False, learn_shift=True, learn_r_on=False)
    names = {n for n, p in layer.named_parameters() if not p.requires_grad}
    assert names == {"period_l0", "period_l1", "r_on_l0", "r_on_l1"}
    out, _ = layer(torch.randn(T, B, I))
    out.sum().backward()
    assert layer.period_l0.grad is None and layer.shift_l0.grad is not None


def test_phased_init_ranges():
    layer = PhasedLSTM(I, 1000, period_init=(1.0, 3.0), r_on=0.1)
    tau = layer.period_l0
    assert tau.min() >= torch.e**1 - 1e-4 and tau.max() <= torch.e**3 + 1e-3
    assert ((layer.shift_l0 >= 0) & (layer.shift_l0 <= tau)).all()
    assert (layer.r_on_l0 == 0.1).all()
    names = dict(layer.named_parameters())
    for n in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0", "period_l0", "shift_l0", "r_on_l0"):
        assert names[n].shape == (1000,)


def test_phased_without_peepholes():
    layer = PhasedLSTM(I, H, peepholes=False)
    assert not any("weight_c" in n for n, _ in layer.named_parameters())
    out, _ = layer(torch.randn(T, B, I))
    assert out.shape == (T, B, H)


def test_learned_initial_state():
    layer = LSTM(I, H, num_layers=2, bidirectional=True, learn_initial_state=True, batch_first=True)
    assert layer.h0.shape == (4, H)
    with torch.no_grad():
        layer.h0.normal_()
        layer.c0.normal_()
    x = torch.randn(B, T, I)
    a, _ = layer(x)
    h0 = layer.h0.unsqueeze(1).expand(4, B, H).contiguous()
    c0 = layer.c0.unsqueeze(1).expand(4, B, H).contiguous()
    b, _ = layer(x, (h0, c0))
    torch.testing.assert_close(a, b)
    a.sum().backward()
    assert layer.h0.grad.abs().sum() > 0


def test_dropout_between_layers_only_in_training():
    layer = LSTM(I, H, num_layers=2, dropout=0.5, batch_first=True)
    x = torch.randn(B, T, I)
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    torch.testing.assert_close(a, b)
    layer.train()
    c, _ = layer(x)
    assert (c - a).abs().max() > 1e-6
    one = LSTM(I, H, num_layers=1, batch_first=True)
    one.load_state_dict({k: v for k, v in layer.state_dict().items() if k.endswith("l0")})
    torch.testing.assert_close(one.train()(x)[0], one.eval()(x)[0])  # no dropout on the last layer's output


@pytest.mark.parametrize("kind", list(LAYERS))
def test_unbatched_input(kind):
    layer = _layer(kind, num_layers=2, bidirectional=True)
    x, times = torch.randn(T, I, dtype=F64), _times(1)[0]
    out, (h, c) = layer(x, times=times)
    assert out.shape == (T, 2 * H) and h.shape == c.shape == (4, H)
    out_b, (h_b, _) = layer(x.unsqueeze(0), times=times)
    torch.testing.assert_close(out, out_b[0])
    torch.testing.assert_close(h, h_b[:, 0])


def test_time_first_layout():
    layer = _layer("phased", batch_first=False)
    x, times = torch.randn(T, B, I, dtype=F64), _times()
    out, _ = layer(x, times=times)
    layer.batch_first = True
    out_bf, _ = layer(x.transpose(0, 1), times=times)
    torch.testing.assert_close(out, out_bf.transpose(0, 1))
