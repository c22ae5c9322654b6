"""The equations: one time step of each cell of the LSTM family.

This file is where the maths lives. Each ``*_step`` function is one time step
written line by line after the equations in its cell's docstring; the cell
modules below hold the parameters for a single step, and the layers in
:mod:`phasedlstm.layers` run the very same step functions over a sequence.

The step functions take the input projection ``xw = W_ih x_t + b_ih`` already
computed, because a layer computes it for all time steps in one matrix product
before its loop (it does not depend on the state). Gate order is PyTorch's:
``i, f, g, o``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phasedlstm import _checks
from phasedlstm.pretrained import Pretrained

__all__ = [
    "LSTMCell",
    "PeepholeLSTMCell",
    "PhasedLSTMCell",
    "LayerNormLSTMCell",
    "lstm_step",
    "peephole_step",
    "phased_step",
    "layernorm_step",
    "time_gate",
    "phase",
]

#: Leak of a closed time gate during training (the authors' value); 0 at evaluation.
DEFAULT_LEAK = 1e-3
#: Lower bound on the effective period |tau| and open ratio |r_on| (see :func:`time_gate`).
_TIME_EPS = 1e-6
#: Epsilon of every layer normalisation.
LN_EPS = 1e-5
#: Rows of a layer normalisation with values beyond this are scaled first (see :func:`layer_norm`).
_LN_BIG = 2.0**40
#: Epsilon of the BN-LSTM's batch normalisations, and the weight of each batch in their
#: population statistics (torch.nn.BatchNorm1d's values).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------------------
# Step functions: the equations
# --------------------------------------------------------------------------------------


def gates(a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The input, forget, cell and output gates of the pre-activations ``a`` (B, 4H), in
    torch.nn.LSTM's order: sigmoid, sigmoid, tanh, sigmoid."""
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
    return torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)


def lstm_step(xw: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, bias_hh: Tensor | None):
    """One LSTM step. ``xw`` is ``W_ih x_t + b_ih``, shape (B, 4H). Returns (h_t, c_t)."""
    a = xw + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates(a)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c


def peephole_step(
    xw: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    weight_ci: Tensor | None,
    weight_cf: Tensor | None,
    weight_co: Tensor | None,
):
    """One peephole-LSTM step (diagonal peepholes; ``None`` means no peephole).

    Input and forget gates peek at c_{t-1}; the output gate at the new c_t.
    """
    a = xw + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
    i = torch.sigmoid(a_i if weight_ci is None else a_i + weight_ci * c)
    f = torch.sigmoid(a_f if weight_cf is None else a_f + weight_cf * c)
    g = torch.tanh(a_g)
    c = f * c + i * g  # the new cell state c_t
    o = torch.sigmoid(a_o if weight_co is None else a_o + weight_co * c)
    h = o * torch.tanh(c)
    return h, c


def phased_step(
    xw: Tensor,
    k: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    weight_ci: Tensor | None,
    weight_cf: Tensor | None,
    weight_co: Tensor | None,
):
    """One Phased-LSTM step; ``k`` is the time-gate openness k_t, shape (B, H).

    The gates are blind to the time gate: the peephole update (output gate peeking
    at c~_t) runs first, then k_t blends the proposal with the previous state.
    """
    h_tilde, c_tilde = peephole_step(xw, h, c, weight_hh, bias_hh, weight_ci, weight_cf, weight_co)
    c = k * c_tilde + (1 - k) * c
    h = k * h_tilde + (1 - k) * h
    return h, c


def layernorm_step(
    xw_ln: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    ln_hh_weight: Tensor,
    bias_hh: Tensor | None,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor | None,
):
    """One layer-normalised LSTM step.

    ``xw_ln`` is ``LN_ih(W_ih x_t)``: the normalised input pre-activation with its gain
    ``ln_ih_weight`` and shift ``bias_ih`` applied (shape (B, 4H)).
    """
    a = xw_ln + layer_norm(F.linear(h, weight_hh), ln_hh_weight, bias_hh)
    i, f, g, o = gates(a)
    c = f * c + i * g
    h = o * torch.tanh(layer_norm(c, ln_c_weight, ln_c_bias))
    return h, c


def batchnorm_step(
    xw_bn: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    bn_hh_weight: Tensor,
    bn_c_weight: Tensor,
    bn_c_bias: Tensor | None,
    stats_hh: tuple[Tensor, Tensor],
    stats_c: tuple[Tensor, Tensor],
    training: bool,
):
    """One batch-normalised LSTM step (Cooijmans et al., 2016).

    ``xw_bn`` is ``BN_ih(W_ih x_t) + b_ih`` (B, 4H). The recurrent term and the new cell state are
    normalised over the batch (:func:`batch_norm`) with this step's population statistics
    ``stats_hh`` (mean, var) (4H,) and ``stats_c`` (H,): in training by the batch's own statistics,
    moving these towards them in place; at evaluation by these.
    """
    a = xw_bn + batch_norm(F.linear(h, weight_hh), bn_hh_weight, bias_hh, *stats_hh, training)
    i, f, g, o = gates(a)
    c = f * c + i * g
    h = o * torch.tanh(batch_norm(c, bn_c_weight, bn_c_bias, *stats_c, training))
    return h, c


def batch_norm(z: Tensor, weight: Tensor, bias: Tensor | None, mean: Tensor, var: Tensor, training: bool) -> Tensor:
    r""":math:`\gamma (z - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` of each feature of ``z`` (B, F):
    ``F.batch_norm`` with the population statistics ``mean``, ``var`` (F,), which training moves
    towards the batch's (momentum BN_MOMENTUM, the variance unbiased). One row in training is its
    own mean: it normalises to the shift, and moves only the population mean."""
    if not training:
        return F.batch_norm(z, mean, var, weight, bias, False, 0.0, BN_EPS)
    with torch.no_grad():  # (apart from the normalisation: the buffers may be stepped again before a backward)
        if z.shape[0] == 1:
            mean.mul_(1 - BN_MOMENTUM).add_(z[0], alpha=BN_MOMENTUM)
        else:
            v, m = torch.var_mean(z, 0, unbiased=True)
            mean.mul_(1 - BN_MOMENTUM).add_(m, alpha=BN_MOMENTUM)
            var.mul_(1 - BN_MOMENTUM).add_(v, alpha=BN_MOMENTUM)
    if z.shape[0] == 1:  # (outside no_grad: the shift's gradient)
        return z.new_zeros(z.shape) if bias is None else bias.expand_as(z)
    return F.batch_norm(z, None, None, weight, bias, True, 0.0, BN_EPS)


#: whether layer_norm rescales rows with values beyond _LN_BIG (off inside plain_layer_norm)
_rescale_huge_rows = [True]


def layer_norm(z: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    r"""Layer normalisation over the last dimension: :math:`\gamma (z - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`.

    ``F.layer_norm(z, (n,), weight, bias, LN_EPS)``, except that a row with values beyond 2^40 is
    first divided by a power of two near its largest value (exactly): the squares of values near
    float32's limit (3e38) would overflow, and ``F.layer_norm`` alone returns NaN there. Such a
    row is normalised as z / S is (eps acts on the scaled row). The fused kernel does the same.
    Inside :func:`plain_layer_norm` it is ``F.layer_norm`` alone.
    """
    if not _rescale_huge_rows[0]:
        return F.layer_norm(z, (z.shape[-1],), weight, bias, LN_EPS)
    big = z.detach().abs().amax(-1, keepdim=True)  # the scale is a constant to autograd (log2(0) would give NaN)
    scale = torch.where(big > _LN_BIG, torch.exp2(torch.floor(torch.log2(big))), torch.ones_like(big))
    return F.layer_norm(z / scale, (z.shape[-1],), weight, bias, LN_EPS)


@contextlib.contextmanager
def plain_layer_norm():
    """Within this block :func:`layer_norm` is ``F.layer_norm`` alone, one operator in a traced graph
    (ONNX's LayerNormalization) instead of nine: what the ONNX export traces, where the rescaling's
    operators would run at every step of the Scan. Rows whose squares overflow (values beyond about
    1e19 in float32) then normalise to NaN instead of their rescaled value."""
    _rescale_huge_rows[0] = False
    try:
        yield
    finally:
        _rescale_huge_rows[0] = True


def layernorm_input(x: Tensor, weight_ih: Tensor, ln_ih_weight: Tensor, bias_ih: Tensor | None) -> Tensor:
    """``LN_ih(W_ih x)`` for any leading shape: the state-free half of the LN-LSTM gates."""
    return layer_norm(F.linear(x, weight_ih), ln_ih_weight, bias_ih)


def phase(times: Tensor, period: Tensor, shift: Tensor) -> Tensor:
    """phi_t = ((t - s) mod tau) / tau in [0, 1), computed in float64.

    ``times`` has any shape (...); ``period`` and ``shift`` have shape (H,); the result
    has shape (..., H) and dtype float64. The modulo is a true modulo
    (:func:`torch.remainder`), so phi is in [0, 1) also for t < s. Float64 keeps the
    phase exact for timestamps as large as 1e9 (seconds since the epoch): its spacing
    there is ~1e-7, where float32's is 64.
    """
    t = times.to(torch.float64).unsqueeze(-1)  # (..., 1)
    tau = period.to(torch.float64).abs().clamp_min(_TIME_EPS)  # (H,)
    s = shift.to(torch.float64)
    return torch.remainder(t - s, tau) / tau  # (..., H)


def time_gate(times: Tensor, period: Tensor, shift: Tensor, r_on: Tensor, leak: float) -> Tensor:
    r"""Openness k_t of the Phased LSTM's time gate.

    .. math::
        \phi_t = \frac{(t - s) \bmod \tau}{\tau}, \qquad
        k_t = \begin{cases}
            2\phi_t / r_{on} & \phi_t < r_{on}/2 \\
            2 - 2\phi_t / r_{on} & r_{on}/2 \le \phi_t < r_{on} \\
            \alpha \phi_t & \text{otherwise}
        \end{cases}

    Shapes: ``times`` (...), ``period``/``shift``/``r_on`` (H,) -> (..., H). The result has
    the dtype of ``period``. As in the authors' code the gate uses |tau| and |r_on|, so any
    value an optimiser writes gives a valid gate; they are further bounded below by 1e-6,
    and r_on above by 1.
    """
    phi = phase(times, period, shift)  # (..., H) float64
    r = r_on.to(torch.float64).abs().clamp(_TIME_EPS, 1.0)
    k = torch.where(
        phi < r / 2,
        2 * phi / r,  # opening
        torch.where(phi < r, 2 - 2 * phi / r, leak * phi),  # closing / closed (leak)
    )
    return k.to(period.dtype)


# --------------------------------------------------------------------------------------
# Initialisation shared by cells and layers
# --------------------------------------------------------------------------------------


def init_lstm_(tensors, bias_ih: Tensor | None, bias_hh: Tensor | None, hidden_size: int, forget_bias: float = 0.0,
               gate_bias=None) -> None:
    """torch.nn.LSTM's initialisation of one cell (or one layer and direction): every tensor
    U(-1/sqrt(H), 1/sqrt(H)) in the order given (torch's, so that one seed gives its numbers); then
    ``forget_bias`` added to the forget gate's part of ``bias_ih``, or, with ``gate_bias`` (i, f, g, o),
    ``bias_ih`` set to those constants per gate and ``bias_hh`` to zero."""
    init_uniform_(tensors, hidden_size)
    if bias_ih is None:
        return
    H = hidden_size
    with torch.no_grad():
        if gate_bias is not None:
            for k, v in enumerate(gate_bias):
                bias_ih[k * H : (k + 1) * H] = v
            bias_hh.zero_()
        else:
            bias_ih[H : 2 * H] += forget_bias


def leak_in_mode(leak: float, training: bool) -> float:
    """The leak alpha of a closed time gate: ``leak`` in training, 0 at evaluation (the paper's rule)."""
    return leak if training else 0.0


def init_uniform_(tensors, hidden_size: int) -> None:
    """torch.nn.LSTM's initialisation: U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    with torch.no_grad():
        for w in tensors:
            w.uniform_(-bound, bound)


def init_time_parameters_(period: Tensor, shift: Tensor, r_on: Tensor, period_init, r_on_init: float,
                          shift_init: float | None = None) -> None:
    """tau ~ exp(U(a, b)), s ~ U(0, tau) (or U(0, shift_init)), r_on = r_on_init (the authors'
    initialisation; their frequency task drew s ~ U(0, 100) ms)."""
    a, b = period_init
    with torch.no_grad():
        period.uniform_(a, b).exp_()
        shift.copy_(torch.rand_like(shift) * (period if shift_init is None else shift_init))
        r_on.fill_(r_on_init)


# --------------------------------------------------------------------------------------
# Cell modules: the parameters of one step
# --------------------------------------------------------------------------------------


class _CellBase(Pretrained, nn.Module):
    """Shared constructor and state handling of the four cells."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        _checks.check_sizes(input_size, hidden_size)
        _checks.check_bool("bias", bias)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.forget_bias = float(forget_bias)
        fk = {"device": device, "dtype": dtype}
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size, **fk))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H, **fk))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * H, **fk))
            self.bias_hh = nn.Parameter(torch.empty(4 * H, **fk))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def _reset_common(self) -> None:
        tensors = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        init_lstm_(tensors, self.bias_ih, self.bias_hh, self.hidden_size, self.forget_bias)

    def _prepare(self, input: Tensor, hx):
        """Validate; return (x (B, I), h (B, H), c (B, H), batched)."""
        return _checks.check_cell_input(self, input, hx)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s


class LSTMCell(_CellBase):
    r"""One step of the LSTM, with :class:`torch.nn.LSTMCell`'s parameters.

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
        i &= \sigma(a_i), \quad f = \sigma(a_f), \quad g = \tanh(a_g), \quad o = \sigma(a_o) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        h_t &= o \odot \tanh(c_t)
        \end{aligned}

    Args:
        input_size: features of x_t.
        hidden_size: H, the number of units.
        bias: use ``bias_ih`` and ``bias_hh``.
        forget_bias: added to the forget-gate part of ``bias_ih`` at initialisation
            (default 0, torch's initialisation; 1.0 is the usual LSTM trick).

    Inputs: ``input`` (B, I) or (I,); ``hx`` = (h, c), each (B, H) or (H,), zeros if None.
    Outputs: (h_t, c_t), each (B, H) or (H,).
    """

    def __init__(self, input_size, hidden_size, bias=True, forget_bias=0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, forget_bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_common()

    def forward(self, input: Tensor, hx=None):
        x, h, c, batched = self._prepare(input, hx)
        h, c = lstm_step(F.linear(x, self.weight_ih, self.bias_ih), h, c, self.weight_hh, self.bias_hh)
        return _checks.unbatch(h, c, batched)


class PeepholeLSTMCell(_CellBase):
    r"""One step of the peephole LSTM (diagonal peepholes, Graves' form).

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
        i &= \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f = \sigma(a_f + w_{cf} \odot c_{t-1}),
            \quad g = \tanh(a_g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(a_o + w_{co} \odot c_t) \\
        h_t &= o \odot \tanh(c_t)
        \end{aligned}

    The input and forget gates peek at the previous cell state, the output gate at the
    new one. Peephole weights ``weight_ci``, ``weight_cf``, ``weight_co`` have shape (H,)
    and are initialised like the other weights, U(-1/sqrt(H), 1/sqrt(H)).
    Arguments, inputs and outputs as :class:`LSTMCell`.
    """

    def __init__(self, input_size, hidden_size, bias=True, forget_bias=0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, forget_bias, device, dtype)
        fk = {"device": device, "dtype": dtype}
        self.weight_ci = nn.Parameter(torch.empty(hidden_size, **fk))
        self.weight_cf = nn.Parameter(torch.empty(hidden_size, **fk))
        self.weight_co = nn.Parameter(torch.empty(hidden_size, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_common()
        init_uniform_([self.weight_ci, self.weight_cf, self.weight_co], self.hidden_size)

    def forward(self, input: Tensor, hx=None):
        x, h, c, batched = self._prepare(input, hx)
        h, c = peephole_step(F.linear(x, self.weight_ih, self.bias_ih), h, c, self.weight_hh, self.bias_hh,
                             self.weight_ci, self.weight_cf, self.weight_co)
        return _checks.unbatch(h, c, batched)


class PhasedLSTMCell(_CellBase):
    r"""One step of the Phased LSTM (Neil, Pfeiffer & Liu, NIPS 2016), with the authors' corrections.

    .. math::
        \begin{aligned}
        \phi_t &= ((t - s) \bmod \tau) / \tau \\
        k_t &= 2\phi_t/r_{on} \;\text{if}\; \phi_t < r_{on}/2;\quad
               2 - 2\phi_t/r_{on} \;\text{if}\; \phi_t < r_{on};\quad
               \alpha\phi_t \;\text{otherwise} \\
        \tilde c_t &= f \odot c_{t-1} + i \odot g
            \quad\text{(peephole LSTM: } i, f \text{ peek at } c_{t-1}) \\
        \tilde h_t &= o \odot \tanh(\tilde c_t), \quad o = \sigma(a_o + w_{co} \odot \tilde c_t) \\
        c_t &= k_t \odot \tilde c_t + (1 - k_t) \odot c_{t-1} \\
        h_t &= k_t \odot \tilde h_t + (1 - k_t) \odot h_{t-1}
        \end{aligned}

    Each unit has its own period ``period`` (tau), shift ``shift`` (s) and open ratio
    ``r_on``, each (H,), stored as themselves in time units. The leak alpha is ``leak``
    (default 1e-3) in training mode and 0 in eval mode. The output-gate peephole uses
    c~_t, before the time gate ("the gates are blind to the time gate"); the modulo is a
    true modulo, correct for t < s; the phase is computed in float64.

    Args:
        input_size, hidden_size, bias, forget_bias: as :class:`LSTMCell`.
        period_init: (a, b); tau ~ exp(U(a, b)) at init (default (1, 6): ~2.7 to ~403).
        r_on: initial open ratio, in (0, 1] (default 0.05).
        leak: alpha in training mode (default 1e-3).
        peepholes: use the peephole weights (default True).
        learn_period, learn_shift, learn_r_on: set False to freeze that parameter.

    Inputs: ``input`` (B, I) or (I,); ``hx`` as :class:`LSTMCell`; keyword ``time``: the
    timestamp of this step, a number or a tensor of shape (B,) (float32, float64 or int).
    """

    def __init__(self, input_size, hidden_size, bias=True, forget_bias=0.0, *, period_init=(1.0, 6.0),
                 r_on=0.05, leak=DEFAULT_LEAK, peepholes=True, learn_period=True, learn_shift=True,
                 learn_r_on=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, forget_bias, device, dtype)
        _checks.check_time_options(period_init, r_on, leak)
        self.period_init = tuple(float(v) for v in period_init)
        self.r_on_init = float(r_on)
        self.leak = float(leak)
        self.peepholes = peepholes
        fk = {"device": device, "dtype": dtype}
        H = hidden_size
        for name in ("weight_ci", "weight_cf", "weight_co"):
            self.register_parameter(name, nn.Parameter(torch.empty(H, **fk)) if peepholes else None)
        self.period = nn.Parameter(torch.empty(H, **fk), requires_grad=learn_period)
        self.shift = nn.Parameter(torch.empty(H, **fk), requires_grad=learn_shift)
        self.r_on = nn.Parameter(torch.empty(H, **fk), requires_grad=learn_r_on)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_common()
        if self.peepholes:
            init_uniform_([self.weight_ci, self.weight_cf, self.weight_co], self.hidden_size)
        init_time_parameters_(self.period, self.shift, self.r_on, self.period_init, self.r_on_init)

    def time_gate(self, time: Tensor) -> Tensor:
        """k_t for timestamps of any shape (...) -> (..., H), with this mode's leak."""
        return time_gate(time, self.period, self.shift, self.r_on, leak_in_mode(self.leak, self.training))

    def forward(self, input: Tensor, hx=None, *, time):
        x, h, c, batched = self._prepare(input, hx)
        t = _checks.check_cell_time(time, x)
        k = self.time_gate(t)  # (B, H)
        h, c = phased_step(F.linear(x, self.weight_ih, self.bias_ih), k, h, c, self.weight_hh, self.bias_hh,
                           self.weight_ci, self.weight_cf, self.weight_co)
        return _checks.unbatch(h, c, batched)


class LayerNormLSTMCell(_CellBase):
    r"""One step of the layer-normalised LSTM (Ba, Kiros & Hinton, 2016).

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= \mathrm{LN}_{ih}(W_{ih} x_t) + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) \\
        i &= \sigma(a_i), \quad f = \sigma(a_f), \quad g = \tanh(a_g), \quad o = \sigma(a_o) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        h_t &= o \odot \tanh(\mathrm{LN}_c(c_t))
        \end{aligned}

    with :math:`\mathrm{LN}(z) = \gamma \odot (z - \mu(z)) / \sqrt{\sigma^2(z) + \epsilon} + \beta`
    over the 4H (gates) or H (cell) features, epsilon 1e-5. Each of the two pre-activations
    is normalised separately with its own gain and shift: the gains are ``ln_ih_weight``,
    ``ln_hh_weight`` (4H,), initialised to 1, and their shifts are ``bias_ih`` and
    ``bias_hh`` — the LSTM's two biases, so the names match :class:`LSTMCell` and
    ``forget_bias`` works the same way. The cell normalisation has ``ln_c_weight`` (1) and
    ``ln_c_bias`` (0), each (H,). With ``bias=False`` no normalisation has a shift.
    """

    def __init__(self, input_size, hidden_size, bias=True, forget_bias=0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, forget_bias, device, dtype)
        fk = {"device": device, "dtype": dtype}
        self.ln_ih_weight = nn.Parameter(torch.empty(4 * hidden_size, **fk))
        self.ln_hh_weight = nn.Parameter(torch.empty(4 * hidden_size, **fk))
        self.ln_c_weight = nn.Parameter(torch.empty(hidden_size, **fk))
        self.register_parameter("ln_c_bias", nn.Parameter(torch.empty(hidden_size, **fk)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_common()
        init_layernorm_(self.ln_ih_weight, self.ln_hh_weight, self.ln_c_weight, self.ln_c_bias)

    def forward(self, input: Tensor, hx=None):
        x, h, c, batched = self._prepare(input, hx)
        xw = layernorm_input(x, self.weight_ih, self.ln_ih_weight, self.bias_ih)
        h, c = layernorm_step(xw, h, c, self.weight_hh, self.ln_hh_weight, self.bias_hh,
                              self.ln_c_weight, self.ln_c_bias)
        return _checks.unbatch(h, c, batched)


def _init_normalisation_(gains, cell_shift, gain: float) -> None:
    with torch.no_grad():
        for g in gains:
            g.fill_(gain)
        if cell_shift is not None:
            cell_shift.zero_()


def init_batchnorm_(bn_ih_weight, bn_hh_weight, bn_c_weight, bn_c_bias) -> None:
    """Gains 0.1 (Cooijmans et al.: gains of 1 saturate tanh and stop the gradient), cell shift 0."""
    _init_normalisation_((bn_ih_weight, bn_hh_weight, bn_c_weight), bn_c_bias, 0.1)


def init_layernorm_(ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias) -> None:
    """Gains 1, cell shift 0 (the gate shifts are the LSTM biases, initialised as usual)."""
    _init_normalisation_((ln_ih_weight, ln_hh_weight, ln_c_weight), ln_c_bias, 1.0)
