"""Inference without gradients (csrc/infer.cpp): the time gate computed inside the loop; a Phased
LSTM at evaluation (leak 0) computes, per step and sequence, only the units whose gate is open."""

from __future__ import annotations

from phasedlstm import fast
from phasedlstm.paths import Declined, fused


def run(layer, steps, h, c, p):
    """The kernel where it accepts the call, else the fused loop (which computes every unit)."""
    r = _kernel(layer, steps, h, c, p, check=True)
    return fused.run(layer, steps, h, c, p) if r is None else r


def stream(layer, steps, h, c, p):
    """One step of a stream: the kernel checks the values; where it declines, :class:`Declined`
    sends the call to the general forward, whose checks then say what is wrong."""
    r = _kernel(layer, steps, h, c, p, check=False)
    if r is None:
        raise Declined
    return r


def _kernel(layer, steps, h, c, p, check):
    x, times, lengths = steps.x, steps.times, steps.lengths
    if check:  # the general forward's (T, B) float64 timestamps in the kernel's forms: (T,) shared, or (B, T)
        times = times[:, 0] if steps.shared else times.t()
    if "r_on" in p and layer.r_on_max < 1.0:
        p = {**p, "r_on": layer._capped(p["r_on"])}
    sparse = layer._inference(x.shape[0]) == "sparse"
    r = fast.infer(x, times, h, c, p, layer._alpha, lengths, sparse)
    if r is None:  # declined: time parameters or weights not finite, or values that could overflow
        if check and "period" in p:
            layer._time_parameters(p)  # (refuses non-finite time parameters, naming them)
        return None
    out, hn, cn, n_open = r
    if sparse:
        counts = steps.open_counts
        counts[0] += n_open
        counts[1] += (x.shape[0] * x.shape[1] if lengths is None else int(lengths.sum())) * layer.hidden_size
    return out, hn, cn
