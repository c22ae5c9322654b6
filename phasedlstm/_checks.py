"""Argument checks: every error says what was expected and what came.

All checks run eagerly, before any computation, and raise :class:`InputError` (a value is out
of range or of the wrong shape) or :class:`InputTypeError` (the wrong kind of object or dtype),
so a user never has to decode a shape error from deep inside torch. Both classes derive from
the exception classes ``torch.nn.LSTM`` raises in the same places as well as from the Python
convention's, so ``except RuntimeError`` written for torch and ``except ValueError`` both catch
them.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from phasedlstm._build import _state as _build_state

# float32 represents every integer exactly only up to 2**24; beyond that, timestamps
# have already lost precision before the time gate sees them.
_FLOAT32_EXACT = 2.0**24
#: period_init's largest |a|, |b|: exp(88) = 1.7e38 is still a float32
PERIOD_EXPONENT_MAX = 88.0


class InputError(ValueError, RuntimeError):
    """An argument of the wrong shape or value. A ValueError, and a RuntimeError as torch.nn.LSTM
    raises for a wrong input or state shape or an empty sequence."""


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type or dtype. A TypeError, and a ValueError as torch.nn.LSTM
    raises for an input whose dtype differs from its parameters'."""


def _shape(t) -> tuple:
    return tuple(t.shape)


def _has_shape(t: Tensor, want: tuple) -> bool:
    """t.shape == want, the number of dimensions compared first: comparing tuples of different
    lengths compares their leading sizes, which a traced graph records as a guard (for example that
    the batch size differs from the number of steps)."""
    return t.dim() == len(want) and all(a == b for a, b in zip(t.shape, want))


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def check_bool(name: str, value) -> None:
    """A flag must be a bool (as torch.nn.LSTM requires of bias and batch_first): 0 or "True" is refused."""
    if not isinstance(value, bool):
        raise InputTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_sizes(input_size, hidden_size) -> None:
    check_int("input_size", input_size, 1)
    check_int("hidden_size", hidden_size, 1)


def check_layer_options(num_layers, dropout, bidirectional, batch_first) -> None:
    check_int("num_layers", num_layers, 1)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise InputTypeError(f"dropout must be a number in [0, 1], got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout <= 1.0:
        raise InputError(f"dropout must be in [0, 1], got {dropout}")
    check_bool("bidirectional", bidirectional)
    check_bool("batch_first", batch_first)
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"dropout={dropout} has no effect with num_layers=1: dropout acts between layers",
            stacklevel=3,
        )


def check_time_options(period_init, r_on, leak) -> None:
    try:
        a, b = (float(v) for v in period_init)
    except (TypeError, ValueError):
        raise InputTypeError(f"period_init must be a pair (a, b) of numbers, got {period_init!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise InputError(f"period_init must be finite and increasing, (a, b) with a < b, got ({a}, {b})")
    if max(abs(a), abs(b)) > PERIOD_EXPONENT_MAX:
        raise InputError(f"period_init ({a}, {b}) draws periods exp(U(a, b)) beyond float32's range (exp(88.7) "
                         f"overflows): give a and b within ±{PERIOD_EXPONENT_MAX:g}, in the log of your time unit")
    if isinstance(r_on, bool) or not isinstance(r_on, numbers.Real):
        raise InputTypeError(f"r_on must be a number in (0, 1], got {type(r_on).__name__} {r_on!r}")
    if not 0.0 < r_on <= 1.0:
        raise InputError(f"r_on must be in (0, 1], got {r_on}")
    if isinstance(leak, bool) or not isinstance(leak, numbers.Real) or not 0.0 <= leak < 1.0:
        raise InputError(f"leak must be a number in [0, 1), got {leak!r}")


def _check_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_like_params(module, name: str, t: Tensor) -> None:
    """Same dtype and device as the module's parameters."""
    ref = module.weight_ih if hasattr(module, "weight_ih") else module.weight_ih_l0
    if not t.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dtype != ref.dtype:
        raise InputTypeError(
            f"{name} has dtype {t.dtype} but the module's parameters have dtype {ref.dtype}; "
            f"convert one of them (e.g. module.to({t.dtype}))"
        )
    if t.device != ref.device:
        raise InputError(f"{name} is on device {t.device} but the module's parameters are on {ref.device}")


def check_state(module, hx, expected: tuple, like: Tensor, expected_h: tuple | None = None):
    """hx must be a pair (h, c) of tensors of shape ``expected`` (h: ``expected_h`` if given, with
    projections); returns it."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise InputTypeError(f"hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
    for name, t in zip(("h_0", "c_0"), hx):
        _check_tensor(name, t)
        want = expected_h if (name == "h_0" and expected_h is not None) else expected
        if not _has_shape(t, want):
            raise InputError(f"Expected {name} of shape {want}, got {_shape(t)}")
        if t.dtype != like.dtype:
            raise InputTypeError(f"{name} has dtype {t.dtype} but input has dtype {like.dtype}")
        if t.device != like.device:
            raise InputError(f"{name} is on device {t.device} but input is on {like.device}")
    return hx[0], hx[1]


def check_cell_input(cell, input, hx):
    """-> (x (B, I), h (B, H), c (B, H), batched)."""
    _check_tensor("input", input)
    _check_like_params(cell, "input", input)
    if input.dim() not in (1, 2):
        raise InputError(f"Expected input of shape (batch, {cell.input_size}) or ({cell.input_size},), "
                         f"got {_shape(input)}")
    if input.shape[-1] != cell.input_size:
        raise InputError(f"Expected input with {cell.input_size} features (last dimension), "
                         f"got {_shape(input)}")
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    B, H = x.shape[0], cell.hidden_size
    if hx is None:
        z = x.new_zeros(B, H)
        return x, z, z, batched
    h, c = check_state(cell, hx, (B, H) if batched else (H,), input)
    if not batched:
        h, c = h.unsqueeze(0), c.unsqueeze(0)
    return x, h, c, batched


def unbatch(h: Tensor, c: Tensor, batched: bool):
    return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


def tracing() -> bool:
    """Under torch.compile / torch.export the checks of values (not of shapes) are skipped: they read
    data, which a graph cannot branch on. Eager calls check everything."""
    return torch.compiler.is_compiling()


def _kernel_checks():
    """The kernels' one-pass value checks (``times_status``, ``all_finite``; csrc/time_gate.cpp) where
    the kernels are loaded, else None. A check as tensor operations costs several operator calls (about
    5 µs each), a tenth of a short sequence's forward; these take one."""
    if not _build_state["loaded"] or torch.jit.is_tracing():  # (torch.jit.trace records no int or bool results)
        return None
    return torch.ops.phasedlstm_fused


def _check_times_values(times: Tensor, lengths: Tensor | None) -> None:
    """times (B, T) or (1, T) (shared) float64: finite everywhere, non-decreasing within the valid steps
    (the first lengths[b] of sequence b, all without lengths)."""
    if tracing():
        return
    ops = _kernel_checks()
    if ops is not None and times.device.type == "cpu" and ops.times_status(times, lengths) == 0:
        return
    valid = None
    if lengths is not None:
        valid = torch.arange(times.shape[1], device=times.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    if not torch.isfinite(times).all():
        b, t = (~torch.isfinite(times)).nonzero()[0].tolist()
        raise InputError(f"times must be finite (padding included), got {times[b, t].item()} "
                         f"at sample {b}, step {t}")
    if times.shape[1] > 1:
        decreasing = times[:, 1:] < times[:, :-1]
        if valid is not None:
            decreasing = decreasing & valid[:, 1:]
        if decreasing.any():
            b, t = decreasing.nonzero()[0].tolist()
            row = times[b if times.shape[0] > 1 else 0]
            raise InputError(
                f"times must be non-decreasing within each sequence's valid steps, but sample {b} "
                f"goes from {row[t].item()} at step {t} to {row[t + 1].item()} at step {t + 1}"
            )


#: the largest magnitude up to which each dtype holds every integer (float64 holds integers exactly
#: only up to 2**53, so int64 timestamps beyond it, such as nanoseconds since the epoch, are rounded)
_EXACT_UP_TO = {torch.float16: 2.0**11, torch.bfloat16: 2.0**8, torch.float32: _FLOAT32_EXACT,
                torch.int64: 2.0**53}


def _warn_imprecise_times(times: Tensor) -> None:
    """Warn when timestamps have lost (or will lose, in float64) the resolution of one time unit."""
    limit = _EXACT_UP_TO.get(times.dtype)
    if limit is None or not times.numel() or tracing():
        return
    top = times.abs().max().item()
    if top <= limit or not math.isfinite(top):  # (a non-finite timestamp is refused by the value check)
        return
    if times.dtype == torch.int64:
        warnings.warn(
            f"times are int64 with magnitudes up to {top:.3g} (nanoseconds since the epoch?); the phase is "
            f"computed in float64, which holds integers exactly only up to 2**53 = 9.0e15, so these are "
            f"rounded (to {2.0 ** (math.floor(math.log2(top)) - 52):.0f} units here). Subtract a common origin "
            f"in integer arithmetic first (the same for every sequence, e.g. the recording's start), and "
            f"preferably convert to a unit near your periods (ms or s).", stacklevel=4)
    else:
        warnings.warn(
            f"times are {str(times.dtype).replace('torch.', '')} with magnitudes up to {top:.3g}; that dtype "
            f"cannot resolve such timestamps (spacing > 1), so phases are already imprecise. Pass float64 "
            f"(or int64) times.", stacklevel=4)


def check_cell_time(time, x: Tensor) -> Tensor:
    """A step's timestamp: a number or a tensor of shape () or (B,) -> float64 (B,)."""
    B = x.shape[0]
    if isinstance(time, numbers.Real) and not isinstance(time, bool):
        t = torch.full((B,), float(time), dtype=torch.float64, device=x.device)
    else:
        _check_tensor("time", time)
        if time.dtype == torch.bool or time.is_complex():
            raise InputTypeError(f"time must be a real number or a float/int tensor, got dtype {time.dtype}")
        if time.dim() > 1 or (time.dim() == 1 and time.shape[0] != B):
            raise InputError(f"Expected time as a number or a tensor of shape () or ({B},), got {_shape(time)}")
        if time.device != x.device:
            raise InputError(f"time is on device {time.device} but input is on {x.device}")
        _warn_imprecise_times(time)
        t = time.to(torch.float64).expand(B)
    if not torch.isfinite(t).all():
        raise InputError("time must be finite")
    return t


def check_layer_input(module, input, hx, times, lengths):
    """Validate a layer's forward arguments.

    Returns (x (T, B, I) time-major, times (T, B) float64, shared, lengths (B,) int64 or None,
    hx (h_0, c_0) each (L*D, B, H) or None, batched); ``shared``: the batch shares its timestamps
    (given as (T,), or the default step index), and ``times`` is then one column expanded to B."""
    _check_tensor("input", input)
    _check_like_params(module, "input", input)
    I, H = module.input_size, module.hidden_size
    if input.dim() not in (2, 3):
        want = "(batch, seq, features)" if module.batch_first else "(seq, batch, features)"
        raise InputError(f"Expected input of 3 dimensions {want} or 2 dimensions (seq, features), "
                         f"got {input.dim()} dimensions of shape {_shape(input)}")
    if input.shape[-1] != I:
        raise InputError(f"Expected input with {I} features (last dimension), got shape {_shape(input)}")
    batched = input.dim() == 3
    if not batched:
        x = input.unsqueeze(1)
    elif module.batch_first:
        x = input.transpose(0, 1)
    else:
        x = input
    T, B = x.shape[0], x.shape[1]
    if T < 1:
        raise InputError(f"Expected a sequence of at least one step, got shape {_shape(input)}")

    # lengths
    if lengths is not None:
        if not batched:
            raise InputError("lengths is only accepted for batched input; slice an unbatched sequence instead")
        if not isinstance(lengths, Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError):
                raise InputTypeError(f"lengths must be a tensor of {B} integers, got {type(lengths).__name__}") from None
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise InputTypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        if not _has_shape(lengths, (B,)):
            hint = ""
            if lengths.dim() == 1 and lengths.shape[0] == T and T != B:
                if module.batch_first:
                    hint = (f": that is the size of input's dimension 1, which the layer reads as the sequence "
                            f"(batch_first=True: (batch, seq, feature)); if your input is (seq, batch, feature), "
                            f"construct the layer with batch_first=False")
                else:
                    hint = (f": that is the size of input's dimension 0, which the layer reads as the sequence "
                            f"(batch_first=False: (seq, batch, feature)); if your input is (batch, seq, feature), "
                            f"construct the layer with batch_first=True")
            raise InputError(f"Expected lengths of shape ({B},) (one per sequence), got {_shape(lengths)}{hint}")
        lo, hi = (1, T) if tracing() else (int(lengths.min()), int(lengths.max()))
        if lo < 1 or hi > T:
            raise InputError(f"lengths must be in [1, {T}] (the padded sequence length), got values in [{lo}, {hi}]")
        lengths = lengths.to(device=x.device, dtype=torch.int64)

    # times
    shared = True
    if times is None:
        times = torch.arange(T, dtype=torch.float64, device=x.device).unsqueeze(1).expand(T, B)
    else:
        _check_tensor("times", times)
        if times.dtype == torch.bool or times.is_complex():
            raise InputTypeError(f"times must be a float32, float64 or integer tensor, got dtype {times.dtype}")
        if times.device != x.device:
            raise InputError(f"times is on device {times.device} but input is on {x.device}")
        if _has_shape(times, (T,)):  # shared by the batch: kept as an expanded view (the fast path uses that)
            _warn_imprecise_times(times)
            t64 = times.to(torch.float64)
            _check_times_values(t64.unsqueeze(0), lengths)
            times = t64.unsqueeze(1).expand(T, B)
        elif batched and _has_shape(times, (B, T)):
            _warn_imprecise_times(times)
            times = times.to(torch.float64)
            _check_times_values(times, lengths)
            times = times.t()  # (T, B)
            shared = B == 1
        else:
            want = f"({B}, {T}) or ({T},)" if batched else f"({T},)"
            raise InputError(f"Expected times of shape {want} (batch, seq) or (seq,), got {_shape(times)}")

    # hx
    LD = module.num_layers * (2 if module.bidirectional else 1)
    if hx is not None:
        P = getattr(module, "proj_size", 0) or H  # h has the projection's size
        h0, c0 = check_state(module, hx, (LD, B, H) if batched else (LD, H), input,
                             (LD, B, P) if batched else (LD, P))
        hx = (h0, c0) if batched else (h0.unsqueeze(1), c0.unsqueeze(1))
    return x, times, shared, lengths, hx, batched


def check_time_parameters(params, name_of) -> None:
    """The Phased LSTM's tau, s and r_on must be finite for the time gate to be defined.
    ``name_of(param)`` gives a parameter's name for the message (called only on failure)."""
    if tracing():
        return
    ops = _kernel_checks()
    if (ops is not None and all(q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) for q in params)
            and ops.all_finite(list(params))):
        return
    for q in params:
        if not bool(torch.isfinite(q).all()):
            name = name_of(q)
            bad = q.detach()[~torch.isfinite(q.detach())]
            raise InputError(f"{name} must be finite, but {bad.numel()} of its {q.numel()} values are not "
                             f"(first: {bad[0].item()}); the time gate is undefined. Training diverged, or the "
                             f"parameter was set by hand: reload a checkpoint or re-initialise it.")


def check_gate_bias(gate_bias, bias: bool, forget_bias: float = 0.0):
    """``gate_bias``: None, or four finite numbers (input, forget, cell, output gate); returns a tuple.
    It sets the forget gate's bias too, so a ``forget_bias`` other than its default is refused."""
    if gate_bias is None:
        return None
    try:
        values = tuple(float(v) for v in gate_bias)
    except (TypeError, ValueError):
        raise InputTypeError(f"gate_bias must be four numbers (input, forget, cell, output gate), got {gate_bias!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"gate_bias must be four finite numbers (input, forget, cell, output gate), got {gate_bias!r}")
    if not bias:
        raise InputError("gate_bias needs bias=True (the layer has no biases to set)")
    if forget_bias != 0.0:
        raise InputError(f"gate_bias sets the forget gate's initial bias too ({values[1]}); give it or "
                         f"forget_bias (got {forget_bias}), not both")
    return values
