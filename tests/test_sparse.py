"""Inference without gradients (fast.infer): the Phased LSTM's sparse updates and the one-step
streaming path equal the dense fused loop and the reference, and never run where gradients or
the training-mode leak are needed."""

import copy
import math
import os
import warnings

import numpy as np
import pytest
import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, fast

if os.environ.get("PHASEDLSTM_REQUIRE_EXT") == "1" and not fast.load():  # CI sets it: no silent skip
    raise RuntimeError(f"PHASEDLSTM_REQUIRE_EXT=1 but the fused kernels are unavailable: {fast.unavailable_reason()}")
pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

# float64 to 1e-12 and float32 to 1e-5, relative to each tensor's largest value
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _close(a, b, dtype, what=""):
    scale = float(a.abs().max()) or 1.0
    err = float((a - b).abs().max())
    assert err <= TOL[dtype] * scale, f"{what}: max difference {err:.3g} (scale {scale:.3g})"


def _phased(dtype, I=3, H=24, learned_r_on=True, **kw):
    m = PhasedLSTM(I, H, batch_first=True, period_init=(0.5, 3.0), dtype=dtype, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight_c"):
                p.add_(torch.randn_like(p) * 0.3)
            if learned_r_on and name.startswith("r_on"):  # open ratios of different sizes, as training leaves them
                p.copy_(torch.empty_like(p).uniform_(0.005, 0.3))
    return m.eval()


def _times(B, T, shared, dtype=torch.float64, scale=0.3, origin=0.0):
    if shared:
        return origin + torch.cumsum(torch.rand(T, dtype=torch.float64) * scale, 0).to(dtype)
    return origin + torch.cumsum(torch.rand(B, T, dtype=torch.float64) * scale, 1).to(dtype)


def _three(m, x, times, lengths=None, hx=None):
    """(sparse, dense fused, reference) outputs of the eval-mode layer, without gradients."""
    dense = copy.deepcopy(m)
    dense.sparse_inference = False
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    with torch.no_grad():
        return [mod(x, hx, times=times, lengths=lengths) for mod in (m, dense, ref)], m.last_open_fraction


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_sparse_equals_dense_and_reference(dtype, layers, bidirectional, shared, with_lengths):
    torch.manual_seed(1)
    m = _phased(dtype, num_layers=layers, bidirectional=bidirectional)
    B, T = 4, 40
    x = torch.randn(B, T, 3, dtype=dtype)
    lengths = torch.tensor([T, 1, 17, 33]) if with_lengths else None
    (sp, de, ref), frac = _three(m, x, _times(B, T, shared), lengths)
    for name, a, b, c in zip(("output", "h_n", "c_n"), (sp[0], *sp[1]), (de[0], *de[1]), (ref[0], *ref[1])):
        _close(b, a, dtype, f"sparse vs dense {name}")
        _close(c, a, dtype, f"sparse vs reference {name}")
    assert frac is not None and 0 < frac < 0.5  # it ran, and skipped most unit-steps


@pytest.mark.parametrize("peepholes", [True, False])
def test_sparse_without_bias_or_peepholes(peepholes):
    torch.manual_seed(2)
    m = _phased(torch.float64, bias=False, peepholes=peepholes)
    x = torch.randn(3, 30, 3, dtype=torch.float64)
    (sp, de, ref), _ = _three(m, x, _times(3, 30, False))
    _close(ref[0], sp[0], torch.float64, "output")
    _close(de[1][1], sp[1][1], torch.float64, "c_n")


def test_closed_units_keep_their_state_exactly():
    torch.manual_seed(3)
    m = _phased(torch.float32, H=32)
    B, T = 2, 60
    x = torch.randn(B, T, 3)
    times = _times(B, T, False)
    with torch.no_grad():
        out, _ = m(x, times=times)
        k = m.time_gates(times.t().contiguous())  # (T, B, H) in eval mode
    closed = (k[1:] == 0).transpose(0, 1)  # (B, T-1, H)
    assert closed.any() and (~closed).any()
    assert torch.equal(out[:, 1:][closed], out[:, :-1][closed])  # to the bit


def test_sparse_at_nanosecond_timestamps():
    """int64 nanoseconds since the epoch (beyond 2**53 a warning; here below it): the inline gate
    is the separate gate kernel's, so sparse equals dense and the reference."""
    torch.manual_seed(4)
    m = _phased(torch.float64, H=16)
    with torch.no_grad():
        m.period_l0.copy_(torch.empty(16).uniform_(1e6, 1e8))  # periods of 1-100 ms in ns
        m.shift_l0.copy_(torch.empty(16).uniform_(0, 1e8))
    B, T = 2, 50
    t = (1_600_000_000_000_000 + torch.cumsum(torch.randint(1_000_000, 5_000_000, (B, T)), 1))  # < 2**53
    x = torch.randn(B, T, 3, dtype=torch.float64)
    (sp, de, ref), frac = _three(m, x, t)
    _close(ref[0], sp[0], torch.float64, "output")
    _close(de[0], sp[0], torch.float64, "output")
    assert frac > 0


def _open_unit_steps(m, times, lengths):
    """The valid unit-steps whose reference gate is open (k > 0), every layer being one layer."""
    k = m.time_gates(times.t().contiguous() if times.dim() == 2 else times[:, None])  # (T, B or 1, H)
    T = k.shape[0]
    k = k.expand(T, lengths.shape[0], k.shape[2])
    valid = torch.arange(T)[:, None] < lengths[None, :]
    return int(((k > 0) & valid[:, :, None]).sum()), int(valid.sum()) * k.shape[2]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("grid", [False, True])
def test_sparse_computes_exactly_the_open_unit_steps(shared, grid):
    """Over many periods (each unit opening and closing dozens of times), the units computed at each
    step are exactly those with k > 0: the kernel examines a closed unit again only when its phase
    can have wrapped, and that never skips an opening. grid: integer periods, shifts and times, so
    that phases fall exactly on 0 (closed: k = 0) and on the edges r/2 and r of the open phase."""
    torch.manual_seed(8)
    B, T, H = 5, 400, 24
    m = _phased(torch.float64, H=H)
    with torch.no_grad():
        if grid:
            m.period_l0.copy_(torch.tensor([2.0, 4.0, 8.0])[torch.randint(0, 3, (H,))])
            m.shift_l0.copy_(torch.tensor([0.0, 0.5, 1.0])[torch.randint(0, 3, (H,))])
            m.r_on_l0.copy_(torch.tensor([0.25, 0.5])[torch.randint(0, 2, (H,))])
    if grid:
        steps = torch.randint(0, 3, (T,) if shared else (B, T)).double() * 0.5  # (equal times too)
        times = torch.cumsum(steps, -1)
    else:
        times = _times(B, T, shared)
    lengths = torch.tensor([T, 1, 250, 399, T])
    x = torch.randn(B, T, 3, dtype=torch.float64)
    (sp, de, ref), frac = _three(m, x, times, lengths)
    _close(ref[0], sp[0], torch.float64, "output")
    _close(de[1][1], sp[1][1], torch.float64, "c_n")
    opened, valid = _open_unit_steps(m, times, lengths)
    assert 0 < opened < valid
    assert round(frac * valid) == opened


def test_sparse_where_timestamps_dwarf_the_periods():
    """Timestamps some 2^50 periods from the origin: every unit's phase is computed at every step
    (the exact remainder), and sparse equals dense."""
    torch.manual_seed(9)
    m = _phased(torch.float64, H=16)
    with torch.no_grad():
        m.period_l0.copy_(torch.empty(16).uniform_(0.5, 3.0))
    B, T = 2, 60
    t = 2.0**52 + torch.cumsum(torch.randint(1, 4, (B, T)), 1).double()
    x = torch.randn(B, T, 3, dtype=torch.float64)
    (sp, de, ref), frac = _three(m, x, t)
    _close(de[0], sp[0], torch.float64, "output")
    opened, valid = _open_unit_steps(m, t, torch.full((B,), T))
    assert round(frac * valid) == opened


def test_open_fraction_matches_r_on():
    torch.manual_seed(5)
    m = _phased(torch.float32, H=64, learned_r_on=False, r_on=0.05)
    x = torch.randn(2, 2000, 3)
    with torch.no_grad():
        m(x, times=_times(2, 2000, True, scale=0.7))
    assert 0.03 < m.last_open_fraction < 0.07


def test_never_in_training_or_with_gradients(monkeypatch):
    torch.manual_seed(6)
    m = _phased(torch.float32)
    x = torch.randn(2, 10, 3)
    times = _times(2, 10, False)
    calls = []
    real = fast.infer
    monkeypatch.setattr(fast, "infer", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    out, _ = m(x, times=times)  # eval, gradients on: the autograd path
    assert out.requires_grad and calls == []
    m.train()
    with torch.no_grad():  # training mode: the leak is on, nothing is skipped
        m(x, times=times)
        m(x[:, :1], times=times[:, :1])
    assert True not in calls  # (a one-step call may run every unit: sparse=False)
    m.eval()
    with torch.no_grad():
        m(x, times=times)
    assert calls[-1] is True
    m.sparse_inference = False
    calls.clear()
    with torch.no_grad():
        m(x, times=times)
        m(x[:, :1], times=times[:, :1])
    assert True not in calls


def test_training_mode_without_gradients_keeps_the_leak():
    torch.manual_seed(7)
    m = _phased(torch.float64).train()
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    t = _times(2, 12, False)
    with torch.no_grad():
        for T in (1, 12):
            _close(ref(x[:, :T], times=t[:, :T])[0], m(x[:, :T], times=t[:, :T])[0], torch.float64, f"T={T}")


# -- streaming: one call per event -------------------------------------------------------------------

def _stream(m, x, times, chunk, hx=None):
    outs = []
    T = x.shape[1]
    with torch.no_grad():
        for i in range(0, T, chunk):
            ti = None if times is None else (times[i:i + chunk] if times.dim() == 1 else times[:, i:i + chunk])
            o, hx = m(x[:, i:i + chunk], hx, times=ti)
            outs.append(o)
    return torch.cat(outs, 1), hx


@pytest.mark.parametrize("cls", [LSTM, PeepholeLSTM, PhasedLSTM])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 7])
@pytest.mark.parametrize("shared", [True, False])
def test_streaming_equals_one_call(cls, dtype, chunk, shared):
    torch.manual_seed(8)
    m = _phased(dtype, num_layers=2) if cls is PhasedLSTM else cls(3, 24, num_layers=2, batch_first=True,
                                                                    dtype=dtype).eval()
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    B, T = 3, 29
    x = torch.randn(B, T, 3, dtype=dtype)
    times = _times(B, T, shared)
    with torch.no_grad():
        full, (h, c) = ref(x, times=times)
    out, (hs, cs) = _stream(m, x, times, chunk)
    _close(full, out, dtype, "output")
    _close(h, hs, dtype, "h_n")
    _close(c, cs, dtype, "c_n")


@pytest.mark.parametrize("cls", [LSTM, PhasedLSTM])
def test_one_step_calls_equal_the_reference_bidirectional(cls):
    """Bidirectional layers called one step at a time (each call its own one-step sequence)."""
    torch.manual_seed(9)
    m = _phased(torch.float64, num_layers=2, bidirectional=True) if cls is PhasedLSTM else \
        cls(3, 8, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64).eval()
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    t = _times(2, 9, False)
    a, ha = _stream(m, x, t, 1)
    b, hb = _stream(ref, x, t, 1)
    _close(b, a, torch.float64, "output")
    _close(hb[0], ha[0], torch.float64, "h_n")


def test_one_step_call_forms():
    """The short path keeps the layer's conventions: time-major input, unbatched input, no hx,
    times as (B, 1), (1,) or absent, int and float32 timestamps, a learned initial state."""
    torch.manual_seed(10)
    for kw in ({}, {"learn_initial_state": True}):
        m = PhasedLSTM(3, 8, r_on=0.5, **kw).eval()  # time-major
        ref = copy.deepcopy(m)
        ref.impl = "reference"
        x = torch.randn(1, 4, 3)
        h = (torch.randn(1, 4, 8), torch.randn(1, 4, 8))
        with torch.no_grad():
            for args in ((x, h, torch.full((4, 1), 3.5, dtype=torch.float64)), (x, None, torch.tensor([2.0])),
                         (x, h, None), (x, h, torch.tensor([7])), (x, h, torch.full((4, 1), 1.25)),
                         (x[:, 0], (h[0][:, 0], h[1][:, 0]), torch.tensor([2.0]))):
                o1, (h1, c1) = m(args[0], args[1], times=args[2])
                o2, (h2, c2) = ref(args[0], args[1], times=args[2])
                assert o1.shape == o2.shape and h1.shape == h2.shape
                _close(o2, o1, torch.float32, "output")
                _close(c2, c1, torch.float32, "c_n")


def test_one_step_call_checks_its_input():
    m = PhasedLSTM(3, 8, batch_first=True).eval()
    x = torch.randn(2, 1, 3)
    h = (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    with torch.no_grad():
        with pytest.raises(ValueError, match="times must be finite"):
            m(x, h, times=torch.tensor([[1.0], [math.nan]]))
        with pytest.raises(TypeError, match="dtype"):
            m(x.double(), h, times=torch.ones(2, 1))
        with pytest.raises(ValueError, match="features"):
            m(torch.randn(2, 1, 4), h, times=torch.ones(2, 1))
        with pytest.raises(ValueError):
            m(x, (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8)), times=torch.ones(2, 1))
        with pytest.raises(ValueError):
            m(x, h, times=torch.ones(3, 1))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            m(x, h, times=torch.full((2, 1), 3e7, dtype=torch.float32))  # beyond float32's integers
        assert any("cannot resolve" in str(v.message) for v in w)
        m.period_l0.data[3] = math.inf
        with pytest.raises(ValueError, match="period_l0 must be finite"):
            m(x, h, times=torch.ones(2, 1))


# -- Stream: the stateful helper ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", [LSTM, PhasedLSTM])
@pytest.mark.parametrize("batched", [False, True])
def test_stream_push_equals_one_call(cls, batched):
    from phasedlstm import Stream

    torch.manual_seed(11)
    m = _phased(torch.float32, num_layers=2) if cls is PhasedLSTM else cls(3, 24, num_layers=2,
                                                                             batch_first=True).eval()
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    B, T = (3 if batched else 1), 25
    x = torch.randn(B, T, 3)
    times = _times(B, T, False)
    with torch.no_grad():
        full, _ = ref(x, times=times)
    s = Stream(m)
    for i in range(T):
        h = s.push(x[:, i] if batched else x[0, i], times[:, i] if batched else float(times[0, i]))
        assert h.shape == ((B, 24) if batched else (24,))
        _close(full[:, i] if batched else full[0, i], h, torch.float32, f"step {i}")
    s.reset()
    h0 = s.push(x[:, 0] if batched else x[0, 0], times[:, 0] if batched else float(times[0, 0]))
    _close(full[:, 0] if batched else full[0, 0], h0, torch.float32, "after reset")


def test_stream_refuses_time_going_back():
    from phasedlstm import Stream

    s = Stream(PhasedLSTM(2, 4).eval())
    s.push(torch.randn(2), 5.0)
    with pytest.raises(ValueError, match="must not decrease"):
        s.push(torch.randn(2), 4.0)
    s.push(torch.randn(2), 5.0)  # equal is allowed
    b = Stream(PhasedLSTM(2, 4).eval())
    b.push(torch.randn(3, 2), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must not decrease"):
        b.push(torch.randn(3, 2), torch.tensor([1.0, 1.5, 3.0]))
    with pytest.raises(ValueError, match="x_t must be"):
        b.push(torch.randn(3, 1, 2), 4.0)


@pytest.mark.parametrize("earlier, later", [
    (5.0, torch.tensor(4.0, dtype=torch.float64)),          # a number, then a 0-d tensor
    (torch.tensor([5.0]), 4),                               # a 1-element tensor, then an int
    (np.float64(5.0), np.int64(4)),                         # NumPy scalars
    (1_700_000_000_000_000_001, 1_700_000_000_000_000_000),  # int64 nanoseconds, back by 1 ns
    (torch.tensor(1_700_000_000_000_000_001), torch.tensor([1_700_000_000_000_000_000])),
])
def test_stream_refuses_time_going_back_in_every_form(earlier, later):
    from phasedlstm import Stream

    s = Stream(PhasedLSTM(2, 4).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (int64 nanoseconds beyond 2**53 warn that the phase rounds)
        s.push(torch.randn(2), earlier)
        with pytest.raises(ValueError, match="must not decrease"):
            s.push(torch.randn(2), later)
        s.push(torch.randn(2), earlier)  # the same time again is allowed


def test_stream_keeps_the_time_by_value_and_needs_it_for_a_time_gate():
    from phasedlstm import Stream

    s = Stream(PhasedLSTM(2, 4).eval())
    buf = torch.tensor(5.0, dtype=torch.float64)
    s.push(torch.randn(2), buf)
    buf.fill_(1.0)  # the caller reuses its buffer: the stream's last time stays 5
    with pytest.raises(ValueError, match="must not decrease"):
        s.push(torch.randn(2), buf)
    with pytest.raises(ValueError, match="t is required"):
        s.push(torch.randn(2), None)
    with pytest.raises(ValueError, match="finite"):
        s.push(torch.randn(2), float("nan"))
    with pytest.raises(TypeError, match="t must be a number"):
        s.push(torch.randn(2), True)
    plain = Stream(LSTM(2, 4).eval())  # no time gate: t may be left out
    assert plain.push(torch.randn(2)).shape == (4,)


@pytest.mark.parametrize("cls", [LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM])
def test_stream_refuses_a_bidirectional_layer(cls):
    from phasedlstm import Stream

    with pytest.raises(ValueError, match="unidirectional"):
        Stream(cls(2, 4, bidirectional=True))


# -- where a closed unit's update would be NaN, sparse steps must not hide it -----------------------

def _nan_pattern_equal(a, b):
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    fa, fb = a.nan_to_num(0.0, 7.0, -7.0), b.nan_to_num(0.0, 7.0, -7.0)
    _close(fb, fa, a.dtype, "values")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["nan_input", "inf_input", "nan_weight", "nan_h0", "overflow", "huge_finite"])
def test_sparse_keeps_the_reference_nan_semantics(dtype, case):
    """A NaN pre-activation makes the reference's closed units NaN too (0 * NaN); the sparse path
    computes such steps densely, so outputs and NaN positions equal the reference's."""
    torch.manual_seed(12)
    m = _phased(dtype, H=16)
    B, T = 3, 30
    x = torch.randn(B, T, 3, dtype=dtype)
    hx = None
    big = 1e30 if dtype == torch.float32 else 1e200
    if case == "nan_input":
        x[1, 7, 2] = math.nan
    elif case == "inf_input":
        x[0, 5, 0] = math.inf
    elif case == "nan_weight":
        with torch.no_grad():
            m.weight_hh_l0[20, 3] = math.nan
    elif case == "nan_h0":
        hx = (torch.zeros(1, B, 16, dtype=dtype), torch.zeros(1, B, 16, dtype=dtype))
        hx[0][0, 2, 5] = math.nan
    elif case == "overflow":  # finite, but products overflow and cancel: inf - inf
        with torch.no_grad():
            m.weight_ih_l0[:, 0] = big
            m.weight_ih_l0[:, 1] = -big
        x[:, 10, :2] = big
    else:  # large but harmless: no NaN anywhere
        x[:, 4] = big
    (sp, de, ref), frac = _three(m, x, _times(B, T, False), hx=hx)
    for a, b, c in zip((sp[0], *sp[1]), (de[0], *de[1]), (ref[0], *ref[1])):
        _nan_pattern_equal(c, a)
        _nan_pattern_equal(b, a)
    if case in ("nan_input", "nan_h0"):
        assert torch.isnan(ref[0]).any() and frac is not None  # sparse ran, with dense steps where needed
    if case in ("inf_input", "huge_finite"):
        assert frac is not None
    if case in ("nan_weight", "overflow"):
        # declined: the dense path's sums are the reference's (an overflow's inf or NaN depends on
        # the order of the sums; MKL's fused multiply-adds give inf where separate ones give NaN)
        assert frac is None


def test_sparse_bound_follows_weight_updates():
    """The cached bound of a weight is recomputed after an in-place update (an optimiser step)."""
    torch.manual_seed(13)
    m = _phased(torch.float32, H=8)
    x = torch.randn(2, 20, 3)
    t = _times(2, 20, False)
    with torch.no_grad():
        m(x, times=t)  # caches the bounds of the finite weights
        m.weight_hh_l0[3, 1] = math.nan  # in place: a new version
        (sp, _, ref), _ = _three(m, x, t)
    _nan_pattern_equal(ref[0], sp[0])


def test_sparse_bound_follows_writes_through_data():
    """A weight written through .data keeps its version: calls of many steps recompute the bound anyway,
    so sparse inference declines on sums that could overflow (it ran no sparse step, and agrees with the
    dense path); one-step calls, which keep the cached bound, follow after fast.forget_weight_bounds()."""
    torch.manual_seed(14)
    m = _phased(torch.float32, H=8)
    x = torch.randn(2, 20, 3)
    t = _times(2, 20, False)
    step = torch.randn(1, 1, 3), (torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))
    with torch.no_grad():
        m(x, times=t)
        m(*step, times=torch.tensor([1.0]))  # both cache the bounds of the ordinary weights
        assert m.last_open_fraction is not None  # (that step ran sparse)
        m.weight_hh_l0.data[:, :2] = 3e38  # rows whose sums overflow float32 in some orders
        m.weight_hh_l0.data[:, 2:4] = -3e38
        sparse, _ = m(x, times=t)
        assert m.last_open_fraction is None  # declined: no step ran sparse
        m.sparse_inference = False
        dense, _ = m(x, times=t)
        m.sparse_inference = True
        _nan_pattern_equal(dense, sparse)
        fast.forget_weight_bounds()
        m(*step, times=torch.tensor([2.0]))
        assert m.last_open_fraction is None


# -- the open-ratio cap and the compute penalty ------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_the_r_on_cap_holds_whatever_an_optimiser_writes(impl):
    """r_on_max: the gate uses min(|r_on|, r_on_max) on every path (training, inference, sparse,
    streaming), equal to the reference gate with the cap applied."""
    from phasedlstm.cells import time_gate

    torch.manual_seed(0)
    m = PhasedLSTM(2, 16, r_on_max=0.1, impl=impl)
    with torch.no_grad():
        m.r_on_l0.copy_(torch.linspace(0.01, 0.9, 16))  # an optimiser's step past the cap
    t = torch.cumsum(torch.rand(3, 50, dtype=torch.float64) * 2, 1)
    want = time_gate(t, m.period_l0, m.shift_l0, m.r_on_l0.detach().clamp(max=0.1), m._alpha)
    torch.testing.assert_close(m.time_gates(t), want)
    x = torch.randn(50, 3, 2)
    ref = PhasedLSTM(2, 16, r_on_max=0.1, impl="reference")
    ref.load_state_dict(m.state_dict())
    for mode in (True, False):
        m.train(mode), ref.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(m(x, times=t)[0], ref(x, times=t)[0], rtol=1e-4, atol=1e-5)
    assert m.expected_open_fraction().item() == pytest.approx(float(torch.linspace(0.01, 0.9, 16).clamp(max=0.1).mean()))
    with pytest.raises(ValueError, match=r"r_on_max must be a number in \(0, 1\]"):
        PhasedLSTM(2, 4, r_on_max=0.0)


def test_the_compute_penalty_lowers_the_open_ratios_and_is_reported(tmp_path):
    """--compute-penalty: its gradient is that of the mean open ratio (1 / units per layer), a coefficient of 0
    changes nothing, and metrics.csv reports the measured open fraction on validation."""
    import csv

    from phasedlstm.train import TrainConfig, load_checkpoint, train

    m = PhasedLSTM(2, 4, num_layers=2, dtype=torch.float64)
    r = m.r_on_l0
    (g,) = torch.autograd.grad(m.expected_open_fraction(), r)
    torch.testing.assert_close(g, torch.full_like(r, 1 / 8) * torch.sign(r.detach()))
    base = dict(task="freq-async", model="phased", hidden_size=8, proj_size=4, batch_size=16, epochs=2,
                task_options={"n_train": 64, "n_val": 16, "n_test": 16}, rnn_options={"r_on": 0.3})
    quiet = dict(progress=False, log=lambda *a: None)
    train(TrainConfig(**base), tmp_path / "plain", **quiet)
    train(TrainConfig(**base, compute_penalty=0.0), tmp_path / "zero", **quiet)
    train(TrainConfig(**base, compute_penalty=50.0), tmp_path / "penalised", **quiet)
    rows = {k: list(csv.DictReader(open(tmp_path / k / "metrics.csv"))) for k in ("plain", "zero", "penalised")}
    assert rows["plain"] == [{**r, "seconds": r2["seconds"]} for r, r2 in zip(rows["zero"], rows["plain"])]
    assert all(0 < float(r["open_fraction"]) <= 1 for r in rows["penalised"])
    r_plain = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]["rnn.r_on_l0"].abs().mean()
    r_pen = load_checkpoint(tmp_path / "penalised" / "last.pt")["model"]["rnn.r_on_l0"].abs().mean()
    assert r_pen < r_plain
    assert float(rows["penalised"][-1]["open_fraction"]) < float(rows["plain"][-1]["open_fraction"])


def test_compute_measures_a_trained_run(tmp_path, capsys):
    """phasedlstm compute: the chosen epoch's accuracy, the measured open fraction (within the cap),
    dense and sparse time per sequence at B = 32 and B = 1; another layer's dense time and its updates
    per unit (every valid step)."""
    import json

    from phasedlstm import cli
    from phasedlstm.train import TrainConfig, train

    base = dict(task="freq-async", hidden_size=8, proj_size=4, batch_size=16, epochs=1,
                task_options={"n_train": 64, "n_val": 16, "n_test": 40})
    quiet = dict(progress=False, log=lambda *a: None)
    train(TrainConfig(**base, model="phased", rnn_options={"r_on": 0.5, "r_on_max": 0.1}), tmp_path / "p", **quiet)
    train(TrainConfig(**base, model="lstm"), tmp_path / "l", **quiet)
    out = tmp_path / "c.json"
    assert cli.main(["compute", str(tmp_path / "p"), "--repeats", "1", "--sequences", "4", "--json", str(out),
                     "--plot", str(tmp_path / "c.png")]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert 0 < row["open_fraction"] < 0.2 and row["r_on_median"] == pytest.approx(0.1)  # (a sample: about r_on)
    assert row["B=32 dense ms/seq"] > 0 and row["B=1 sparse ms/seq"] > 0 and (tmp_path / "c.png").exists()
    from phasedlstm.train import load_run_model

    steps = float(load_run_model(tmp_path / "p")[1].test.lengths.double().mean())
    assert row["updates_per_unit"] == pytest.approx(steps * row["open_fraction"])
    assert cli.main(["compute", str(tmp_path / "l"), "--repeats", "1", "--sequences", "4", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "lstm" and row["open_fraction"] is None and row["updates_per_unit"] == pytest.approx(steps)
    assert row["B=1 dense ms/seq"] > 0 and "B=1 sparse ms/seq" not in row
    assert "| lstm |" in capsys.readouterr().out


def test_a_phased_run_measures_its_inference_at_the_end(tmp_path):
    """RUN/inference.json: the best epoch's model on the test split, dense and sparse, measured."""
    import json

    from phasedlstm.train import TrainConfig, train

    logs = []
    cfg = TrainConfig(task="freq-async", model="phased", hidden_size=8, proj_size=4, batch_size=16, epochs=2,
                      task_options={"n_train": 64, "n_val": 16, "n_test": 40})
    train(cfg, tmp_path / "p", progress=False, log=logs.append)
    r = json.loads((tmp_path / "p" / "inference.json").read_text())
    assert r["sequences"] == 40 and 0 < r["open_fraction"] <= 1
    for k in ("B=32 dense ms/seq", "B=32 sparse ms/seq", "B=1 dense ms/seq", "B=1 sparse ms/seq"):
        assert r[k] > 0
    assert any(line.startswith("inference of epoch") for line in logs)
    train(TrainConfig(**{**cfg.__dict__, "model": "lstm"}), tmp_path / "l", progress=False, log=logs.append)
    assert not (tmp_path / "l" / "inference.json").exists()
