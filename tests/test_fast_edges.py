"""The fused path at the edges users reach: saturating and infinite inputs, huge timestamps,
gradients to the timestamps, non-finite time parameters, double backward.

Each test compares the fused kernels with the reference loop (impl="reference") on the same
weights; a NaN in one and a number in the other is a failure."""

import copy
import itertools
import math
import os

import pytest
import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, fast
from phasedlstm.cells import time_gate

if os.environ.get("PHASEDLSTM_REQUIRE_EXT") == "1" and not fast.load():  # CI sets it: no silent skip
    raise RuntimeError(f"PHASEDLSTM_REQUIRE_EXT=1 but the fused kernels are unavailable: {fast.unavailable_reason()}")
pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

LAYERS = {"lstm": LSTM, "peephole": PeepholeLSTM, "phased": PhasedLSTM, "layernorm": LayerNormLSTM}
INF = float("inf")
RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}


def _pair(kind, dtype, **kw):
    torch.manual_seed(0)
    kw.setdefault("forget_bias", 1.0)  # (the values these edge cases were chosen against)
    ref = LAYERS[kind](3, 20, dtype=dtype, impl="reference", **kw)  # H = 20: full and partial vector lanes
    fst = copy.deepcopy(ref)
    fst.impl = "fast"
    return ref, fst


def _run(m, x, **kw):
    x = x.clone().requires_grad_()
    m.zero_grad()
    out, (h, c) = m(x, **kw)
    (out.sum() + h.sum() + c.sum()).backward()
    res = {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach(), "d_input": x.grad}
    res.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return res


def _assert_agree(a, b, dtype):
    """Same NaN positions, and equal numbers elsewhere (tolerance relative to the tensor's size, and
    at least 100 x the smallest normal float: the fused backward flushes denormal floats to zero)."""
    assert a.keys() == b.keys()
    for k in a:
        nan_a, nan_b = a[k].isnan(), b[k].isnan()
        assert torch.equal(nan_a, nan_b), f"{k}: NaN in {int(nan_a.sum())} entries of the reference, {int(nan_b.sum())} of the fused"
        fa, fb = a[k][~nan_a], b[k][~nan_b]
        scale = float(fa.abs().nan_to_num(posinf=0.0, neginf=0.0).max()) if fa.numel() else 1.0
        atol = max(RTOL[dtype] * (scale or 1.0), 100 * torch.finfo(dtype).tiny)
        torch.testing.assert_close(fb, fa, rtol=RTOL[dtype], atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where,scale", list(itertools.product(["input", "weights"], [1e2, 1e4, 1e30, INF, -INF])))
def test_saturating_values_agree_with_reference(kind, dtype, where, scale):
    """Gate pre-activations far into saturation (and infinite ones) give the reference's numbers,
    forward and backward: the vectorised sigmoid/tanh once returned NaN below about -89."""
    ref, fst = _pair(kind, dtype)
    x = torch.randn(6, 7, 3, dtype=dtype)
    if where == "input":
        if math.isinf(scale):
            x[2, 3, 1] = scale
            x[4, 0, 0] = scale
        else:
            x = x * scale
    else:
        for m in (ref, fst):
            with torch.no_grad():
                if math.isinf(scale):
                    m.weight_ih_l0[5, 1] = scale
                else:
                    m.weight_ih_l0.mul_(scale)
    a, b = _run(ref, x), _run(fst, x)
    if math.isfinite(scale):
        assert not a["output"].isnan().any()
    _assert_agree(a, b, dtype)


LENGTHS = [9, 3, 5, 9, 1, 2, 7, 8, 9, 4, 6, 9, 2, 3, 5]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("case", ["recurrent weight inf", "recurrent weight inf, lengths", "input inf in padding"])
@pytest.mark.parametrize("split", ["rule", "units"])
def test_nan_positions_of_gradients_agree_with_reference(kind, case, split, tune):
    """Non-finite values: the same NaN positions in every output and gradient. A closed time gate
    adds exactly 0 to d r_on (NaN upstream included), and the padding past a sequence's end takes
    no part in any number, so d_input there is 0 and a non-finite padded input changes nothing.
    Both ways of sharing a step among threads (the rule picks the split by sequences here)."""
    if split != "rule":
        tune(split=split)
    ref, fst = _pair(kind, torch.float32)
    x = torch.randn(9, 15, 3)
    kw = {}
    if "lengths" in case or "padding" in case:
        kw["lengths"] = torch.tensor(LENGTHS)
    if "weight" in case:
        for m in (ref, fst):
            with torch.no_grad():
                m.weight_hh_l0[7, 3] = INF
    else:
        x[6, 1, 0] = INF  # sequence 1 has 3 steps: step 6 is padding
        x[4, 4, 2] = float("nan")
    a, b = _run(ref, x, **kw), _run(fst, x, **kw)
    _assert_agree(a, b, torch.float32)
    if "lengths" in kw:
        padded = torch.arange(9)[:, None] >= torch.tensor(LENGTHS)[None, :]
        assert (a["d_input"][padded] == 0).all()
    if "padding" in case:
        assert all(torch.isfinite(v).all() for v in a.values())


def test_reported_reproducer_gives_torch_numbers():
    torch.manual_seed(0)
    m = LSTM(1, 8, forget_bias=0.0)
    theirs = torch.nn.LSTM(1, 8)
    theirs.load_state_dict(m.state_dict())
    x = torch.full((5, 1, 1), 300.0)
    ours = m(x)[0]
    assert not ours.isnan().any()
    torch.testing.assert_close(ours, theirs(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_of_huge_values_is_finite_and_equal(dtype):
    """LN(s z) = LN(z): values near float32's limit must not overflow the variance (F.layer_norm
    alone gives NaN there); the reference and the kernel both scale such rows first."""
    ref, fst = _pair("layernorm", dtype)
    x = torch.randn(6, 7, 3, dtype=dtype) * 1e36
    # (kept denormal: the gradients of such rows are near float32's smallest normal, and their
    # products with x ~ 1e36 are the weight gradients, which flushing them to zero would change)
    with fast.tuning(flush_denormals=False):
        a, b = _run(ref, x), _run(fst, x)
    assert not a["output"].isnan().any()
    _assert_agree(a, b, dtype)


# -- the time gate ------------------------------------------------------------------------------

NS_EPOCH = 1_700_000_000_000_000_000  # nanoseconds since the epoch, as pandas' datetime64[ns] gives


@pytest.mark.parametrize("times,shift", [
    (torch.tensor(NS_EPOCH) + torch.arange(10) * 1_000_000, None),   # int64 ns
    (torch.arange(10, dtype=torch.float64) * 0.7, 1e30),              # a hand-set huge shift
    (torch.arange(10, dtype=torch.float64) * 0.7 + 1e9, None),        # seconds since the epoch
    (torch.arange(10, dtype=torch.float64) * 1e15 - 3e16, None),      # |t - s| / tau around 1e16
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_time_gate_equals_reference_for_huge_timestamps(times, shift, dtype):
    torch.manual_seed(0)
    period = torch.rand(64, dtype=dtype) * 10 + 0.5
    s = torch.rand(64, dtype=dtype) * 5 if shift is None else torch.full((64,), shift, dtype=dtype)
    r_on = torch.rand(64, dtype=dtype) * 0.3 + 0.01
    t64 = times.to(torch.float64).view(10, 1)
    for leak in (0.0, 1e-3):
        want = time_gate(t64, period, s, r_on, leak)
        got = fast.time_gate(t64, period, s, r_on, leak)
        assert float(got.min()) >= 0 and float(got.max()) <= 1
        torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)


def test_phased_layer_with_nanosecond_timestamps_agrees_and_warns():
    ref, fst = _pair("phased", torch.float32)
    times = (torch.tensor(NS_EPOCH) + torch.arange(7) * 1_000_000).expand(6, 7)
    x = torch.randn(6, 7, 3)
    with pytest.warns(UserWarning, match="2\\*\\*53"):
        a = _run(ref, x.transpose(0, 1), times=times)
    with pytest.warns(UserWarning, match="common origin"):
        b = _run(fst, x.transpose(0, 1), times=times)
    _assert_agree(a, b, torch.float32)


@pytest.mark.parametrize("dtype,top", [(torch.float16, 5000.0), (torch.bfloat16, 1000.0), (torch.float32, 1e8)])
def test_low_precision_timestamps_warn(dtype, top):
    m = PhasedLSTM(1, 4)
    with pytest.warns(UserWarning, match="cannot resolve such timestamps"):
        m(torch.randn(3, 1), times=torch.tensor([top, top + 1, top + 2]).to(dtype))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_to_times_equals_reference(shared, dtype):
    """d output / d times: the fused path once returned None silently."""
    ref, fst = _pair("phased", dtype, r_on=0.4, period_init=(0.5, 2.0), batch_first=True)
    x = torch.randn(5, 9, 3, dtype=dtype)
    base = torch.rand(9 if shared else (5, 9), dtype=torch.float64).mul(0.9).add(0.05).cumsum(-1)
    grads = []
    for m in (ref, fst):
        t = base.clone().requires_grad_()
        out, (h, c) = m(x, times=t)
        (out.sin().sum() + h.sum()).backward()
        assert t.grad is not None
        grads.append(t.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=RTOL[dtype], atol=RTOL[dtype] * float(grads[0].abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leak", [0.0, 1e-3])
def test_time_gate_gradients_equal_reference(dtype, leak):
    """d tau, d s, d r_on and d times of the fused gate (4 units at a time on AVX2, the rest one by one:
    H = 37) against autograd through the reference, with units rising, falling and closed."""
    torch.manual_seed(1)
    H = 37
    period = (torch.rand(H, dtype=dtype) * 10 + 0.5).requires_grad_()
    s = (torch.rand(H, dtype=dtype) * 5 - 2).requires_grad_()
    r_on = (torch.rand(H, dtype=dtype) * 0.6 + 0.02).requires_grad_()
    times = torch.rand(6, 11, dtype=torch.float64).mul(3).cumsum(-1).requires_grad_()
    dk = torch.randn(6, 11, H, dtype=dtype)
    grads = []
    for fn in (time_gate, fast.time_gate):
        k = fn(times, period, s, r_on, leak)
        grads.append(torch.autograd.grad((k * dk).sum(), (period, s, r_on, times)))
    k = time_gate(times, period, s, r_on, leak).detach()
    assert (k <= leak).any() and (k > leak).sum() > 10  # closed (k = leak phi) and open units both reached
    tol = RTOL[dtype]
    for got, want in zip(grads[1], grads[0]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("name", ["r_on_l0", "period_l0", "shift_l0"])
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("value", [float("nan"), INF])
@pytest.mark.parametrize("mode", ["train", "sparse", "dense", "one step"])
def test_non_finite_time_parameters_are_refused(name, impl, value, mode):
    """In training and in every inference path (sparse, dense, a stream's one-step call)."""
    m = PhasedLSTM(2, 6, impl=impl)
    with torch.no_grad():
        getattr(m, name)[3] = value
    if mode != "train":
        m.eval()
        m.sparse_inference = mode != "dense"
    with pytest.raises(ValueError, match=f"{name} must be finite"), torch.set_grad_enabled(mode == "train"):
        m(torch.randn(1 if mode == "one step" else 4, 2))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_double_backward_on_the_fused_path_equals_the_reference(kind):
    """create_graph=True on the fused path differentiates the reference equations: the first and the
    second derivatives equal the reference's (to the weights, as a gradient penalty needs)."""
    ref, fst = _pair(kind, torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    got = []
    for m in (ref, fst):
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        second = torch.autograd.grad(g.pow(2).sum(), [x] + list(m.parameters()), allow_unused=True)
        got.append((g, second))
    torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-9, atol=1e-12)
    for a, b in zip(got[1][1], got[0][1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("kind", ["lstm", "peephole"])
def test_a_gradient_that_shrinks_below_float32s_normal_range_equals_the_reference(kind):
    """A loss on h_n alone over many steps: the gradient shrinks step by step into denormal floats,
    which the fused backward flushes to zero (denormal arithmetic is many times slower). The
    gradients equal the reference's to float32 tolerance, the early steps' are (nearly) zero in
    both, and the caller's thread keeps its own denormal handling afterwards."""
    ref, fst = _pair(kind, torch.float32)
    torch.manual_seed(1)
    x = torch.randn(600, 4, 3)
    grads = []
    for m in (ref, fst):
        xg = x.clone().requires_grad_()
        m.zero_grad()
        _, (h, c) = m(xg)
        h.sum().backward()
        grads.append([xg.grad] + [p.grad for p in m.parameters()])
    assert grads[0][0][:100].abs().max() < 1e-30  # (the regime: the gradient has vanished by then)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert (torch.tensor(1e-40) * 1.0).item() > 0  # (denormals are not flushed outside the kernel)
    with fast.tuning(flush_denormals=False):  # kept: the same numbers (slower)
        xg = x.clone().requires_grad_()
        fst.zero_grad()
        fst(xg)[1][0].sum().backward()
    for a, b in zip(grads[1], [xg.grad] + [p.grad for p in fst.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
