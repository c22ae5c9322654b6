"""Each cell against a hand-written float64 (NumPy) computation of its equations, and gradcheck."""

import math

import numpy as np
import pytest
import torch

from phasedlstm import LayerNormLSTMCell, LSTMCell, PeepholeLSTMCell, PhasedLSTMCell, phase, time_gate

B, I, H = 3, 4, 5


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_params(cell):
    return {n: p.detach().numpy().astype(np.float64) for n, p in cell.named_parameters()}


def np_gates(p, x, h):
    a = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    return a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]


def np_layer_norm(z, gain, shift, eps=1e-5):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return gain * (z - mu) / np.sqrt(var + eps) + shift


def np_time_gate(t, p, alpha):
    tau, s, r = np.abs(p["period"]), p["shift"], np.abs(p["r_on"])
    k = np.empty((len(t), H))
    for b in range(len(t)):
        for j in range(H):
            phi = math.fmod(t[b] - s[j], tau[j])
            if phi < 0:  # true modulo
                phi += tau[j]
            phi /= tau[j]
            if phi < r[j] / 2:
                k[b, j] = 2 * phi / r[j]
            elif phi < r[j]:
                k[b, j] = 2 - 2 * phi / r[j]
            else:
                k[b, j] = alpha * phi
    return k


def np_step(kind, p, x, h, c, t=None, alpha=0.0):
    if kind == "lstm":
        ai, af, ag, ao = np_gates(p, x, h)
        c = sig(af) * c + sig(ai) * np.tanh(ag)
        return sig(ao) * np.tanh(c), c
    if kind == "layernorm":
        a = np_layer_norm(x @ p["weight_ih"].T, p["ln_ih_weight"], p["bias_ih"]) + np_layer_norm(
            h @ p["weight_hh"].T, p["ln_hh_weight"], p["bias_hh"]
        )
        ai, af, ag, ao = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        c = sig(af) * c + sig(ai) * np.tanh(ag)
        return sig(ao) * np.tanh(np_layer_norm(c, p["ln_c_weight"], p["ln_c_bias"])), c
    # peephole, and the phased cell's proposal
    ai, af, ag, ao = np_gates(p, x, h)
    i = sig(ai + p["weight_ci"] * c)
    f = sig(af + p["weight_cf"] * c)
    c_new = f * c + i * np.tanh(ag)
    o = sig(ao + p["weight_co"] * c_new)  # output gate peeks at the new (pre-time-gate) state
    h_new = o * np.tanh(c_new)
    if kind == "peephole":
        return h_new, c_new
    k = np_time_gate(t, p, alpha)
    return k * h_new + (1 - k) * h, k * c_new + (1 - k) * c


CELLS = {"lstm": LSTMCell, "peephole": PeepholeLSTMCell, "phased": PhasedLSTMCell, "layernorm": LayerNormLSTMCell}


def _randomise(cell):
    with torch.no_grad():
        for n, p in cell.named_parameters():
            if n == "period":
                p.uniform_(2.0, 8.0)
            elif n == "shift":
                p.uniform_(-3.0, 3.0)
            elif n == "r_on":
                p.uniform_(0.2, 0.6)
            else:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("training", [True, False])
def test_cell_matches_numpy_equations(kind, training):
    cell = CELLS[kind](I, H, dtype=torch.float64)
    _randomise(cell)
    cell.train(training)
    p = np_params(cell)
    xs = np.random.default_rng(0).normal(size=(6, B, I))
    times = np.cumsum(np.random.default_rng(1).uniform(0.1, 1.5, size=(6, B)), axis=0) - 2.0  # some t < s
    h_np = np.zeros((B, H))
    c_np = np.zeros((B, H))
    state = None
    alpha = 1e-3 if training else 0.0
    for step in range(6):
        x = torch.from_numpy(xs[step])
        if kind == "phased":
            state = cell(x, state, time=torch.from_numpy(times[step]))
        else:
            state = cell(x, state)
        h_np, c_np = np_step(kind, p, xs[step], h_np, c_np, times[step], alpha)
        np.testing.assert_allclose(state[0].detach().numpy(), h_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state[1].detach().numpy(), c_np, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_gradcheck(kind):
    cell = CELLS[kind](I, H, dtype=torch.float64)
    _randomise(cell)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    # timestamps chosen away from the gate's kinks (phi = 0, r_on/2, r_on)
    t = torch.tensor([0.3, 1.7, 4.1], dtype=torch.float64)

    def f(x, h, c, *ps):
        kwargs = {"time": t} if kind == "phased" else {}
        out = torch.func.functional_call(cell, dict(zip(names, ps)), (x, (h, c)), kwargs)
        return out

    assert torch.autograd.gradcheck(f, (x, h, c, *params))
    if kind == "phased":
        assert {"period", "shift", "r_on"} <= set(names)


def test_phased_gradients_reach_time_parameters():
    cell = PhasedLSTMCell(I, H, r_on=0.5, dtype=torch.float64)
    h, c = cell(torch.randn(B, I, dtype=torch.float64), time=torch.tensor([0.3, 1.2, 2.5]))
    (h.sum() + c.sum()).backward()
    for p in (cell.period, cell.shift, cell.r_on):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_unbatched_cell():
    cell = LSTMCell(I, H)
    x = torch.randn(I)
    h, c = cell(x)
    hb, cb = cell(x.unsqueeze(0))
    assert h.shape == (H,)
    torch.testing.assert_close(h, hb[0])
    torch.testing.assert_close(c, cb[0])


def test_lstm_cell_equals_torch_cell():
    ref = torch.nn.LSTMCell(I, H)
    ours = LSTMCell(I, H)
    ours.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    for a, b in zip(ref(x, (h, c)), ours(x, (h, c))):
        torch.testing.assert_close(b, a)


# ---------------------------------------------------------------------------------------
# The time gate at known phases
# ---------------------------------------------------------------------------------------


def _gate(t, tau=10.0, s=0.0, r_on=0.2, leak=1e-3):
    t = torch.as_tensor(t, dtype=torch.float64)
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return time_gate(t, one(tau), one(s), one(r_on), leak)[..., 0]


def test_time_gate_shape_pieces():
    # tau 10, r_on 0.2: open phase is [0, 0.2), i.e. t in [0, 2); peak at phi = 0.1 (t = 1)
    k = _gate([0.0, 0.5, 1.0, 1.5, 1.99, 2.0, 5.0, 9.99])
    expected = [0.0, 0.5, 1.0, 0.5, 0.01, 1e-3 * 0.2, 1e-3 * 0.5, 1e-3 * 0.999]
    torch.testing.assert_close(k, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_time_gate_eval_mode_has_no_leak():
    k = _gate([5.0, 7.0], leak=0.0)
    assert (k == 0).all()
    from phasedlstm import PhasedLSTMCell

    cell = PhasedLSTMCell(1, 4).eval()
    with torch.no_grad():
        cell.period.fill_(10.0)
        cell.shift.zero_()
        cell.r_on.fill_(0.2)
    assert (cell.time_gate(torch.tensor([5.0])) == 0).all()
    assert (cell.train().time_gate(torch.tensor([5.0])) > 0).all()


def test_time_gate_true_modulo_before_shift():
    # t < s: phase must wrap into [0, 1), as torch.remainder does and torch.fmod does not
    phi = phase(torch.tensor([-1.0, -9.0], dtype=torch.float64), torch.tensor([10.0]), torch.tensor([3.0]))
    torch.testing.assert_close(phi[:, 0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    # t = s - 9.5 is phase 0.05 of the next cycle: opening, k = 2 * 0.05 / 0.2 = 0.5
    torch.testing.assert_close(_gate([-9.5], s=0.0), torch.tensor([0.5], dtype=torch.float64))


def test_time_gate_exact_near_1e9():
    base = 1_700_000_000.0  # seconds since the epoch
    offsets = torch.tensor([0.25, 1.0, 1.5, 3.125], dtype=torch.float64)
    # tau = 4 divides the base, so the phase at base + d equals the phase at d
    k_big = _gate(base + offsets, tau=4.0, r_on=1.0)
    k_small = _gate(offsets, tau=4.0, r_on=1.0)
    torch.testing.assert_close(k_big, k_small, rtol=0, atol=1e-6)
    # float32 parameters: the gate is still exact because the phase is computed in float64
    t32 = time_gate(base + offsets, torch.tensor([4.0]), torch.tensor([0.0]), torch.tensor([1.0]), 0.0)
    torch.testing.assert_close(t32[:, 0], k_small.float(), rtol=0, atol=1e-6)


def test_time_gate_uses_absolute_period_and_ratio():
    a = _gate([0.5, 1.5, 6.0], tau=10.0, r_on=0.2)
    b = _gate([0.5, 1.5, 6.0], tau=-10.0, r_on=-0.2)
    torch.testing.assert_close(a, b)
