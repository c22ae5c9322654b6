"""The fast path: a fused native loop over time with a hand-written backward (the kernels of csrc/).

Why native code: a Python loop pays interpreter and autograd overhead at every step, and
stays 1.1-2.1x behind torch.nn.LSTM however it is written (TorchScript and torch.compile
included). The kernels run the whole sequence in one parallel region over the batch
(sequences never interact, so there is no synchronisation per step); per step and thread one
GEMM for the input and recurrent terms and one fused element-wise pass. The backward is
written by hand in the same shape: per step the gate gradients, dh_{t-1}, dx_t and per-thread
sums of the weight gradients. The time gate of all steps is computed before the loop (its
own fused kernel, float64 phase), so autograd carries dk on to tau, s and r_on. For float32
on CPUs with AVX-512 or AVX2 and FMA the per-step GEMMs use a register-blocked micro-kernel on
weights packed once per call; elsewhere at::addmm. csrc/common.h describes the layouts.

Building and loading: :mod:`phasedlstm._build` (its names are re-exported here: ``load``,
``load_built``, ``ext_dir``, ``unavailable_reason``). Where the kernels cannot run, the layers run
the reference loop, and :func:`usable` warns once. CUDA tensors take the reference path.

The reference implementation stays in :mod:`phasedlstm.layers` (``impl="reference"``); the
tests prove both give the same outputs and gradients.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from phasedlstm import _build
from phasedlstm._checks import tracing  # (under torch.compile / torch.export the graph forms are called)
from phasedlstm._build import (CSRC, _state, build_dir, ext_dir, load, load_built, sources,  # noqa: F401
                               unavailable_reason)

_SPLITS = {"auto": 0, "units": 1, "batch": 2}
#: the kernels' options (csrc/common.h's Options) in the order of set_options / get_options, with their types
_OPTIONS = {"packed": bool, "running_rows": bool, "split": int, "kblock": int, "flush_denormals": bool,
            "pool_mib": int}


def _options() -> dict:
    return dict(zip(_OPTIONS, torch.ops.phasedlstm_testing.get_options()))


def _set_options(now: dict) -> None:
    torch.ops.phasedlstm_testing.set_options(*(kind(now[name]) for name, kind in _OPTIONS.items()))


@contextlib.contextmanager
def tuning(*, packed: bool | None = None, running_rows: bool | None = None, split: str | None = None,
           kblock: int | None = None, flush_denormals: bool | None = None, pool_mib: int | None = None):
    """The kernels' tuning switches for the duration of a block (tests and benchmarks; the defaults
    are the strategies of docs/speed.md, or what the PHASEDLSTM_PACKED, _RUNNING_ROWS, _SPLIT, _KBLOCK
    _FLUSH_DENORMALS and _POOL_MIB environment variables said when the kernels loaded). ``packed``: the
    micro-kernel (False: at::addmm); ``running_rows``: with lengths, multiply only the sequences still
    running; ``split``: "auto", "units" or "batch"; ``kblock``: the unit split's products by blocks of
    this many rows of K (0: whole); ``flush_denormals``: the backward flushes denormal floats to zero;
    ``pool_mib``: the most memory of freed large buffers kept for the next calls (0: none, and what is
    kept is freed). Restored on exit."""
    if not load():
        raise RuntimeError(f"the fused kernels are not available: {_state['error']}")
    before = _options()
    now = dict(before)
    for name, value in (("packed", packed), ("running_rows", running_rows), ("kblock", kblock),
                        ("flush_denormals", flush_denormals), ("pool_mib", pool_mib)):
        if value is not None:
            now[name] = value
    if split is not None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        now["split"] = _SPLITS[split]
    _set_options(now)
    try:
        yield
    finally:
        _set_options(before)


def usable(x: Tensor) -> tuple[bool, str]:
    """(can the fused loop run on this input, why not)."""
    if x.device.type != "cpu":
        return False, f"the fused kernels are CPU-only; input is on {x.device}"
    if x.dtype not in (torch.float32, torch.float64):
        return False, f"the fused kernels take float32 or float64, input is {x.dtype}"
    if not load():
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"phasedlstm: the fused CPU kernels are not available ({_state['error']}); "
                          f"running the reference implementation", RuntimeWarning, stacklevel=4)
        return False, _state["error"]
    return True, ""


def _contiguous(t: Tensor | None) -> Tensor | None:
    """An optional argument of the kernels (Tensor? in their schemas): the kernels index raw memory."""
    return None if t is None else t.contiguous()


def _lengths(lengths: Tensor | None) -> Tensor | None:
    """The kernels' form of lengths: contiguous int64, or None for "all steps valid"."""
    return None if lengths is None else lengths.to(torch.int64).contiguous()


def _through_reference(*grads) -> bool:
    """Whether a backward must differentiate the reference equations instead of running the kernel's:
    when it is asked to build a graph (create_graph=True: double backward, gradient penalties,
    Hessian-vector products), which the kernel's hand-written derivatives cannot, or when its incoming
    gradients are batched (``is_grads_batched=True``, ``jacobian(vectorize=True)``), which the kernel
    has no batching rule for."""
    f = torch._C._functorch
    return torch.is_grad_enabled() or any(
        isinstance(g, Tensor) and (f.is_batchedtensor(g) or f.is_legacy_batchedtensor(g)) for g in grads)


def _reference_grads(reference, inputs, needs, grads) -> tuple:
    """The gradients of ``reference(*inputs)`` (its outputs paired with ``grads``) with respect to the
    inputs for which ``needs`` is True (None for the others); themselves differentiable when grad
    mode is on. The saved inputs keep their place in the caller's graph, so a second derivative
    reaches whatever they were computed from."""
    with torch.enable_grad():
        ins = [t.detach().requires_grad_() if n and not t.requires_grad else t for t, n in zip(inputs, needs)]
        outs = reference(*ins)
    wrt = [t for t, n in zip(ins, needs) if n]
    if not wrt:
        return tuple(None for _ in needs)
    got = iter(torch.autograd.grad(outs, wrt, grads, create_graph=torch.is_grad_enabled(), allow_unused=True))
    return tuple(next(got) if n else None for n in needs)


def _reference_loop(x, h0, c0, lengths, step):
    """Run ``step(t, h, c) -> (h, c)`` over the T steps of x (T, B, ...) with the layers' masking: past
    a sequence's end (``lengths``, or None for all steps valid) its state is kept and its output is zero."""
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        h_new, c_new = step(t, h, c)
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)
            h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
            outs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
        else:
            h, c = h_new, c_new
            outs.append(h)
    return torch.stack(outs), h, c


def reference_lstm(x, w_ih, bias, w_hh, h0, c0, peep, k, lengths):
    """lstm_forward's equations in plain PyTorch, with its arguments (None for absent ones):
    the step functions of :mod:`phasedlstm.cells`."""
    from phasedlstm import cells

    pre = F.linear(x, w_ih, bias)  # (T, B, 4H)
    wci, wcf, wco = peep.unbind(0) if peep is not None else (None, None, None)

    def step(t, h, c):
        if k is not None:
            return cells.phased_step(pre[t], k[t], h, c, w_hh, None, wci, wcf, wco)
        return cells.peephole_step(pre[t], h, c, w_hh, None, wci, wcf, wco)

    return _reference_loop(x, h0, c0, lengths, step)


def reference_layernorm_lstm(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths):
    """ln_forward's equations in plain PyTorch, with its arguments (None for absent biases)."""
    from phasedlstm import cells

    pre = cells.layernorm_input(x, w_ih, g_ih, b_ih)
    return _reference_loop(x, h0, c0, lengths,
                           lambda t, h, c: cells.layernorm_step(pre[t], h, c, w_hh, g_hh, b_hh, g_c, b_c))


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _split_in_force() -> int:
    """How the kernels share a step among threads now (0: by shape, 1: units, 2: batch)."""
    return _options()["split"]


@contextlib.contextmanager
def _split(split: int):
    """The backward in the split its forward ran in (a split chosen for a call, phasedlstm.autotune,
    holds for the call's forward only: its backward runs later, outside it)."""
    now = _options()
    if now["split"] == split:
        yield
        return
    _set_options({**now, "split": split})
    try:
        yield
    finally:
        _set_options(now)


class _FusedLSTM(torch.autograd.Function):
    """LSTM / peephole / Phased LSTM over all steps of one direction (time-major)."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, w_hh, h0, c0, peep, k, lengths):
        out, hn, cn, acts, hs, cs = torch.ops.phasedlstm_fused.lstm_forward(
            x, w_ih, bias, w_hh, h0, c0, peep, k, lengths, True)
        ctx.save_for_backward(x, w_ih, w_hh, peep, k, lengths, acts, hs, cs, bias, h0, c0)
        ctx.has_bias = bias is not None
        ctx.split = _split_in_force()
        return out, hn, cn

    @staticmethod
    def backward(ctx, g_out, g_hn, g_cn):
        x, w_ih, w_hh, peep, k, lengths, *kept, bias, h0, c0 = ctx.saved_tensors
        if _through_reference(g_out, g_hn, g_cn):
            return _reference_grads(reference_lstm, (x, w_ih, bias, w_hh, h0, c0, peep, k, lengths),
                                    ctx.needs_input_grad, (g_out, g_hn, g_cn))
        with _split(ctx.split):
            return _lstm_grads((x, w_ih, w_hh, peep, k, lengths, *kept), ctx.has_bias, g_out, g_hn, g_cn)


def _lstm_grads(saved, has_bias, g_out, g_hn, g_cn, copy=False) -> tuple:
    """Gradients of (x, w_ih, bias, w_hh, h0, c0, peep, k, lengths) from the kernel's backward;
    ``saved`` = (x, w_ih, w_hh, peep, k, lengths, acts, hs, cs). ``copy``: for graphs (see _copies)."""
    x, w_ih, w_hh, peep, k, lengths, acts, hs, cs = saved
    d = torch.ops.phasedlstm_fused.lstm_backward(
        _contiguous(g_out), _contiguous(g_hn), _contiguous(g_cn), x, w_ih, w_hh, peep, k, lengths, acts, hs, cs)
    d = _copies(d) if copy else d
    return (d[0], d[1], d[2] if has_bias else None, d[3], d[4], d[5], d[6] if peep is not None else None,
            d[7] if k is not None else None, None)


class _FusedTimeGate(torch.autograd.Function):
    """k (T, kB, H) from times (T, kB) float64 and tau, s, r_on (H,), in one pass each way."""

    @staticmethod
    def forward(ctx, times, period, shift, r_on, leak):
        ctx.save_for_backward(times, period, shift, r_on)
        ctx.leak = leak
        return torch.ops.phasedlstm_fused.time_gate_forward(times, period, shift, r_on, leak)

    @staticmethod
    def backward(ctx, d_k):
        if _through_reference(d_k):
            from phasedlstm.cells import time_gate as reference_gate

            return _reference_grads(lambda *a: reference_gate(*a, ctx.leak), ctx.saved_tensors,
                                    ctx.needs_input_grad[:4], (d_k,)) + (None,)
        grads = _gate_grads(ctx.saved_tensors, ctx.leak, d_k)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])) + (None,)


def _gate_grads(saved, leak, d_k, copy=False) -> tuple:
    """Gradients of (times, tau, s, r_on) from the gate kernel's backward; ``saved`` = those four."""
    times, tau, s, r_on = saved
    d_tau, d_s, d_r, d_t = torch.ops.phasedlstm_fused.time_gate_backward(d_k.contiguous(), times, tau, s, r_on, leak)
    return tuple(_copies([d_t, d_tau, d_s, d_r])) if copy else (d_t, d_tau, d_s, d_r)


def time_gate(times: Tensor, period: Tensor, shift: Tensor, r_on: Tensor, leak: float) -> Tensor:
    """The fused equivalent of :func:`phasedlstm.cells.time_gate` for times (T, kB) -> (T, kB, H)."""
    args = (times.to(torch.float64).contiguous(), period.contiguous(), shift.contiguous(), r_on.contiguous())
    if tracing():  # an operator with fake and autograd registered (see the end of this file)
        return torch.ops.phasedlstm_fused.time_gate_forward(*args, float(leak))
    if _needs_grad(times, period, shift, r_on):
        return _FusedTimeGate.apply(*args, float(leak))
    return torch.ops.phasedlstm_fused.time_gate_forward(*args, float(leak))


class _FusedLayerNormLSTM(torch.autograd.Function):
    """Layer-normalised LSTM over all steps of one direction, both normalisations of the gates inside."""

    @staticmethod
    def forward(ctx, x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths):
        out, hn, cn, *saved = torch.ops.phasedlstm_fused.ln_forward(
            x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths, True)
        ctx.save_for_backward(x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths, *saved, h0, c0)
        ctx.has_bias = b_ih is not None, b_hh is not None, b_c is not None
        ctx.split = _split_in_force()
        return out, hn, cn

    @staticmethod
    def backward(ctx, g_out, g_hn, g_cn):
        *saved, h0, c0 = ctx.saved_tensors
        if _through_reference(g_out, g_hn, g_cn):
            x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths = saved[:10]
            return _reference_grads(reference_layernorm_lstm,
                                    (x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths),
                                    ctx.needs_input_grad, (g_out, g_hn, g_cn))
        with _split(ctx.split):
            return _ln_grads(saved, ctx.has_bias, g_out, g_hn, g_cn)


def _ln_grads(saved, has_bias, g_out, g_hn, g_cn, copy=False) -> tuple:
    """Gradients of ln_forward's inputs (x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c,
    lengths) from the kernel's backward; ``saved`` = the inputs but h0, c0, then what it kept."""
    x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths, *rest = saved
    d = torch.ops.phasedlstm_fused.ln_backward(
        _contiguous(g_out), _contiguous(g_hn), _contiguous(g_cn), x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths, *rest)
    d = _copies(d) if copy else d
    bih, bhh, bc = has_bias
    return (d[0], d[1], d[2], d[3] if bih else None, d[4], d[5], d[6], d[7], d[8] if bhh else None, d[9],
            d[10] if bc else None, None)


def reference_batchnorm_lstm(wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population, eps):
    """bn_forward's equations in plain PyTorch, with its arguments: each step's input term wx_t
    (= x_t W_ih^T), recurrent term and cell state normalised per feature by the statistics of the
    sequences running at that step (``population`` None) or by ``population`` (T, 18H) =
    [mean_ih | var_ih | mean_hh | var_hh | mean_c | var_c]. The population statistics are not
    moved (the layer's reference loop, paths.batchnorm.run, moves them)."""
    from phasedlstm import cells

    H = w_hh.shape[1]
    T = wx.shape[0]
    valid = None if lengths is None else torch.arange(T, device=wx.device)[:, None] < lengths[None, :]

    def bn(z, t, at, width, gain, shift):
        """z (B, F) normalised per feature: by the running rows' mean and biased variance, or by the
        population statistics of step t at columns at (means) and at + width (variances)."""
        if population is None:
            v = torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device) if valid is None else \
                valid[t].unsqueeze(1).to(z.dtype)
            n = v.sum()
            mean = (z * v).sum(0) / n
            var = ((z - mean) * v).square().sum(0) / n
        else:
            mean, var = population[t, at:at + width], population[t, at + width:at + 2 * width]
        out = (z - mean) * torch.rsqrt(var + eps) * gain
        return out if shift is None else out + shift

    def step(t, h, c):
        a = bn(wx[t], t, 0, 4 * H, g_ih, b_ih) + bn(F.linear(h, w_hh), t, 8 * H, 4 * H, g_hh, b_hh)
        i, f, g, o = cells.gates(a)
        c = f * c + i * g
        return o * torch.tanh(bn(c, t, 16 * H, H, g_c, b_c)), c

    return _reference_loop(wx, h0, c0, lengths, step)


class _FusedBatchNormLSTM(torch.autograd.Function):
    """The BN-LSTM over all steps of one direction from its input products wx = x W_ih^T (T, B, 4H);
    outputs, final state, and the batch statistics of every step (not differentiable: the layer
    moves its population statistics with them)."""

    @staticmethod
    def forward(ctx, wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population, eps):
        out, hn, cn, xn, zn, kept, rstd, hs, cs, stats, n = torch.ops.phasedlstm_fused.bn_forward(
            wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population, eps, True)
        ctx.save_for_backward(wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population,
                              xn, zn, kept, rstd, hs, cs, n)
        ctx.eps = eps
        ctx.mark_non_differentiable(stats, n)
        return out, hn, cn, stats, n

    @staticmethod
    def backward(ctx, g_out, g_hn, g_cn, _g_stats, _g_n):
        *inputs, xn, zn, kept, rstd, hs, cs, n = ctx.saved_tensors
        wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population = inputs
        if _through_reference(g_out, g_hn, g_cn):
            return _reference_grads(reference_batchnorm_lstm, (*inputs, ctx.eps), ctx.needs_input_grad,
                                    (g_out, g_hn, g_cn))
        d = torch.ops.phasedlstm_fused.bn_backward(
            _contiguous(g_out), _contiguous(g_hn), _contiguous(g_cn), w_hh, g_ih, g_hh, g_c, lengths,
            population is None, xn, zn, kept, rstd, hs, cs, n)
        # d wx, dW_hh, d g_ih, d b_ih, d g_hh, d b_hh, d g_c, d b_c, dh0, dc0
        return (d[0], d[1], d[2], d[3] if b_ih is not None else None, d[4], d[5] if b_hh is not None else None,
                d[6], d[7] if b_c is not None else None, d[8], d[9], None, None, None)


def batchnorm_lstm(wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0, lengths, population, eps):
    """Run the BN-LSTM over its input products wx (T, B, 4H) = x W_ih^T; ``population`` (T, 18H) or
    None for the batch's statistics. -> (output (T, B, H), h_n, c_n, the batch statistics (T, 18H) =
    [mean_ih | var_ih | mean_hh | var_hh | mean_c | var_c], variances biased (empty with
    ``population``), the number of running sequences per step (T,))."""
    c = _contiguous
    args = (wx.contiguous(), w_hh.contiguous(), g_ih.contiguous(), c(b_ih), g_hh.contiguous(), c(b_hh),
            g_c.contiguous(), c(b_c), h0.contiguous(), c0.contiguous(), _lengths(lengths), c(population), float(eps))
    if _needs_grad(wx, w_hh, g_ih, b_ih, g_hh, b_hh, g_c, b_c, h0, c0):
        return _FusedBatchNormLSTM.apply(*args)
    out, hn, cn, *_, stats, n = torch.ops.phasedlstm_fused.bn_forward(*args, False)  # (keeps nothing)
    return out, hn, cn, stats, n


def lstm(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
         peep: Tensor | None, k: Tensor | None, lengths: Tensor | None):
    """Run one direction over x (T, B, I). bias (4H,) = b_ih + b_hh or None; peep (3, H) or None;
    k (T, B or 1, H) or None; lengths (B,) or None. -> (output (T, B, H), h_n (B, H), c_n (B, H)).

    Without gradients to compute (inference), nothing is kept for backward."""
    # the kernels index raw memory: every tensor they read must be contiguous
    args = (x.contiguous(), w_ih.contiguous(), _contiguous(bias), w_hh.contiguous(), h0.contiguous(), c0.contiguous(),
            _contiguous(peep), _contiguous(k), _lengths(lengths))
    if tracing():
        out = torch.ops.phasedlstm_fused.lstm_forward_graph(*args, _needs_grad(x, w_ih, bias, w_hh, h0, c0, peep, k))
        return out[0], out[1], out[2]
    if _needs_grad(x, w_ih, bias, w_hh, h0, c0, peep, k):
        return _FusedLSTM.apply(*args)
    out, hn, cn = torch.ops.phasedlstm_fused.lstm_forward(*args, False)[:3]
    return out, hn, cn


def layernorm_lstm(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths):
    """Run one direction of the LN-LSTM over x (T, B, I); b_* None when bias=False."""
    c = _contiguous
    args = (x.contiguous(), c(w_ih), c(g_ih), c(b_ih), c(w_hh), h0.contiguous(), c0.contiguous(), c(g_hh), c(b_hh),
            c(g_c), c(b_c), _lengths(lengths))
    if tracing():
        out = torch.ops.phasedlstm_fused.ln_forward_graph(*args, _needs_grad(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh,
                                                                               b_hh, g_c, b_c))
        return out[0], out[1], out[2]
    if _needs_grad(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c):
        return _FusedLayerNormLSTM.apply(*args)
    out, hn, cn = torch.ops.phasedlstm_fused.ln_forward(*args, False)[:3]
    return out, hn, cn


_absmax_cache: dict = {}  # id(tensor) -> (weak reference, (version, data_ptr), max |tensor|)


#: calls of fewer sequence-steps than this (a stream's one-step calls) take the weights' bounds from
#: a cache kept per weight version; longer calls have the kernel compute them from the weights
BOUND_CACHE_BELOW = 32


def forget_weight_bounds() -> None:
    """Drop the cached bounds of the weights (see :func:`_absmax`). Needed only after writing weights
    through ``.data`` (which torch does not count as a new version) and before one-step calls."""
    _absmax_cache.clear()


def _absmax(t: Tensor | None) -> float:
    """max |t| (inf if any value is not finite; 0 for None): the sparse kernel's bound on its
    pre-activations, for calls of few steps. Kept per tensor while its version and storage stay the
    same, so that one-step calls read it once per weight update; writes through ``.data`` do not
    change the version (:func:`forget_weight_bounds`)."""
    if t is None:
        return 0.0
    key = (t._version, t.data_ptr())
    hit = _absmax_cache.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == key:
        return hit[2]
    d = t.detach()
    v = float(d.abs().max()) if d.numel() else 0.0
    if v != v:  # NaN
        v = float("inf")
    if len(_absmax_cache) > 4096:  # (entries of tensors gone since)
        _absmax_cache.clear()
    _absmax_cache[id(t)] = (weakref.ref(t), key, v)
    return v


def infer(x: Tensor, times: Tensor | None, h0: Tensor, c0: Tensor, p: dict, leak: float, lengths: Tensor | None,
          sparse: bool):
    """Inference (no gradients) of one direction of an LSTM, peephole or Phased LSTM layer with the
    time gate computed inside the loop, from ``p`` (a layer's parameters by base name). ``times``:
    (T,) shared, (B, T), or None (the step index). ``sparse`` (Phased LSTM, leak 0): compute only
    the units whose gate is open. -> (output (T, B, H), h_n (1, B, H), c_n (1, B, H), open) or None
    where the kernel declines: non-finite or imprecise times or time parameters, dtypes that
    differ (the caller's checks then say what is wrong), or, for sparse, non-finite weights or
    values large enough for a sum of products to overflow (where the result depends on the order
    of the sums: the caller runs the dense path, whose sums are the reference's).
    ``open``: the unit-steps computed."""
    if not sparse:
        bounds = [0.0, 0.0, 0.0]
    elif x.shape[0] * x.shape[1] < BOUND_CACHE_BELOW:  # (cached per weight version)
        bounds = [_absmax(p["weight_ih"]), _absmax(p["weight_hh"]), _absmax(p["bias_ih"]) + _absmax(p["bias_hh"])]
    else:
        bounds = [-1.0, -1.0, -1.0]  # computed by the kernel, from the weights as they are now
    res, status, n_open = torch.ops.phasedlstm_fused.infer_forward(
        x, times, h0, c0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p.get("weight_ci"),
        p.get("weight_cf"), p.get("weight_co"), p.get("period"), p.get("shift"), p.get("r_on"),
        float(leak), _lengths(lengths), sparse, bounds)
    if status:
        return None
    return res[0], res[1], res[2], n_open


# -- graphs: torch.compile and torch.export -------------------------------------------------------
#
# Traced code calls the kernels as PyTorch operators with fake implementations (shapes only) and
# registered autograd, so Dynamo and export see through them (no graph break, no opaque Python
# function): lstm_forward_graph / ln_forward_graph (outputs that never alias each other) and
# time_gate_forward. The graph then refers to C++ operators only: running an exported program
# needs the kernels' shared library loaded (importing phasedlstm does that), not this file.

_graph_ops: dict = {"registered": False}


def _fake_lstm(x, w_ih, bias, w_hh, h0, c0, peep, k, lengths, save):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[1]
    e = x.new_empty(0)
    big = (lambda *s: x.new_empty(s)) if save else (lambda *s: e)  # noqa: E731
    return [x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), big(T, B, 4 * H), big(T + 1, B, H),
            big(T + 1, B, H)]


def _fake_ln(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths, save):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[1]
    e = x.new_empty(0)
    big = (lambda *s: x.new_empty(s)) if save else (lambda *s: e)  # noqa: E731
    return [x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), big(T, B), big(T, B, 8 * H), big(T, B),
            big(T, B, H), big(T, B), big(T + 1, B, H), big(T + 1, B, H)]


def _fake_gate(times, tau, s, r_on, leak):
    return tau.new_empty(*times.shape, tau.shape[0])


def _fake_gate_backward(dk, times, tau, s, r_on, leak):
    return [tau.new_empty(tau.shape), tau.new_empty(tau.shape), tau.new_empty(tau.shape), times.new_empty(times.shape)]


def _fake_lstm_backward(g_out, g_hn, g_cn, x, w_ih, w_hh, peep, k, lengths, acts, hs, cs):
    B, H = x.shape[1], w_hh.shape[1]
    return [x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), x.new_empty(4 * H), w_hh.new_empty(w_hh.shape),
            x.new_empty(B, H), x.new_empty(B, H), x.new_empty(0) if peep is None else peep.new_empty(peep.shape),
            x.new_empty(0) if k is None else k.new_empty(k.shape)]


def _fake_ln_backward(g_out, g_hn, g_cn, x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths, *saved):
    B, H = x.shape[1], w_hh.shape[1]
    v = (lambda n: x.new_empty(n))  # noqa: E731
    return [x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), v(4 * H), v(4 * H), w_hh.new_empty(w_hh.shape),
            x.new_empty(B, H), x.new_empty(B, H), v(4 * H), v(4 * H), v(H), v(H)]


def _copies(grads):
    """The kernels' backward returns some gradients as views of one buffer; a graph gets copies."""
    return [g.clone() if isinstance(g, Tensor) else g for g in grads]


def _setup_lstm(ctx, inputs, output):
    x, w_ih, bias, w_hh, h0, c0, peep, k, lengths, save = inputs
    ctx.save_for_backward(x, w_ih, w_hh, peep, k, lengths, *output[3:])
    ctx.has_bias = bias is not None


def _backward_lstm(ctx, grads):
    return _lstm_grads(ctx.saved_tensors, ctx.has_bias, *grads[:3], copy=True) + (None,)  # (+ save)


def _setup_ln(ctx, inputs, output):
    x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths, save = inputs
    ctx.save_for_backward(x, w_ih, g_ih, b_ih, w_hh, g_hh, b_hh, g_c, b_c, lengths, *output[3:])
    ctx.has_bias = b_ih is not None, b_hh is not None, b_c is not None


def _backward_ln(ctx, grads):
    return _ln_grads(ctx.saved_tensors, ctx.has_bias, *grads[:3], copy=True) + (None,)  # (+ save)


def _setup_gate(ctx, inputs, output):
    times, tau, s, r_on, leak = inputs
    ctx.save_for_backward(times, tau, s, r_on)
    ctx.leak = leak


def _backward_gate(ctx, d_k):
    return _gate_grads(ctx.saved_tensors, ctx.leak, d_k, copy=True) + (None,)


def _register_graph_ops() -> None:
    """Fake implementations and autograd of the kernels' operators (once, after they are loaded)."""
    if _graph_ops["registered"]:
        return
    lib = "phasedlstm_fused::"
    for name, fake in (("lstm_forward_graph", _fake_lstm), ("ln_forward_graph", _fake_ln),
                       ("time_gate_forward", _fake_gate), ("time_gate_backward", _fake_gate_backward),
                       ("lstm_backward", _fake_lstm_backward), ("ln_backward", _fake_ln_backward)):
        torch.library.register_fake(lib + name, fake)
    torch.library.register_autograd(lib + "lstm_forward_graph", _backward_lstm, setup_context=_setup_lstm)
    torch.library.register_autograd(lib + "ln_forward_graph", _backward_ln, setup_context=_setup_ln)
    torch.library.register_autograd(lib + "time_gate_forward", _backward_gate, setup_context=_setup_gate)
    _graph_ops["registered"] = True



_build.ON_LOAD.append(_register_graph_ops)
