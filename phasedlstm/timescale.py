"""The time scale of a data set, and the Phased LSTM's initialisation chosen from it.

The Phased LSTM's periods, shifts and open ratios live in the unit of its timestamps, and its
default initialisation, tau ~ exp(U(1, 6)), suits timestamps in the unit of the authors'
frequency tasks (1 ms samples, 15-125 ms sequences). On data in other units that range is
arbitrary: on recordings 50 Hz apart, timestamped in seconds and 20-50 s long, it gives periods
of 2.7-403 s, and most units never open within a recording.

:func:`auto_time_init` measures the training data instead — g, the median gap between
consecutive observations, and D, the median duration of a sequence — and returns

- ``time_scale`` = g: timestamps are divided by it before the layer, so the time parameters
  count sampling gaps, whatever the unit (seconds, milliseconds, nanoseconds): the same data in
  another unit gives the same model, and the optimiser's steps on the periods are steps of the
  same size relative to the data;
- ``period_init`` = (ln 2, ln max(D / (4 g), 8)): the shortest periods are two gaps (the
  finest rhythm the sampling resolves), the longest a quarter of a typical sequence (every unit
  opens at least about four times within it); for the authors' frequency tasks (g = 1 ms,
  D = 70 ms) this is exp(U(0.69, 2.86)), next to their exp(U(1, 3)).

- ``r_on`` = min(1, max(0.05, 125 / n)), n the median number of observations in a sequence: a
  unit open for a fraction r_on of its period takes part in about n * r_on of a sequence's
  observations, so about 125 of them where sequences are long (the authors' sparse 0.05 from
  2,500 observations on) and all of them, in a triangle of openness over each period, where
  sequences are short or sparse. The constant was chosen on the validation splits of the real
  recordings (RESULTS.md, "Real recordings"): on watch windows of 250 samples, BasicMotions and
  JapaneseVowels, at every drop, an r_on of 0.5-1 was as good or better than 0.05-0.2. It buys
  accuracy with compute: the sparse inference of a fresh layer saves about 1 - r_on of the
  unit-steps, so give ``--r-on 0.05`` where that matters more.

Shifts are then drawn from U(0, tau), as the layer does.
"""

from __future__ import annotations

import math

import numpy as np

#: the shortest initial period, in sampling gaps
MIN_PERIOD_GAPS = 2.0
#: the longest initial period, as a fraction of the median duration (and at least LONG_MIN gaps)
LONGEST_FRACTION = 0.25
LONG_MIN_GAPS = 8.0
#: observations a unit takes part in per sequence (within r_on's bounds)
OPEN_OBSERVATIONS = 125.0
R_ON_MIN = 0.05


def time_statistics(times, lengths=None) -> dict:
    """The median positive gap between consecutive observations, the median duration (last
    minus first timestamp) and the median number of observations of sequences. ``times``: a list of 1-D arrays, or a padded (N, T)
    array or tensor with ``lengths`` (N,)."""
    if lengths is not None:
        t = np.asarray(times.detach().cpu() if hasattr(times, "detach") else times, dtype=np.float64)
        n = np.asarray(lengths.detach().cpu() if hasattr(lengths, "detach") else lengths, dtype=np.int64)
        if t.ndim != 2 or n.shape != (t.shape[0],):
            raise ValueError(f"times must be (N, T) with lengths (N,), got {t.shape} and {n.shape}")
        series = [t[i, : n[i]] for i in range(len(n))]
    else:
        series = [np.asarray(s, dtype=np.float64) for s in times]
    gaps = np.concatenate([np.diff(s) for s in series if len(s) > 1] or [np.zeros(0)])
    gaps = gaps[gaps > 0]
    if not len(gaps):
        raise ValueError("the sequences have no two observations at different times: no time scale to measure")
    durations = np.array([s[-1] - s[0] for s in series if len(s) > 1])
    gap = float(np.median(gaps))
    return {"median_gap": gap, "median_duration": max(float(np.median(durations)), gap),
            "median_observations": float(np.median([len(s) for s in series]))}


def auto_time_init(times, lengths=None) -> dict:
    """The Phased LSTM's initialisation for data with these timestamps (see the module
    docstring) -> {"time_scale", "period_init", "r_on", "median_gap", "median_duration",
    "median_observations"}.

    Use it with the layer as ``PhasedLSTM(..., period_init=a["period_init"], r_on=a["r_on"])`` called with
    ``times / a["time_scale"]``; the command line does this when ``--period-init`` is auto.
    """
    stats = time_statistics(times, lengths)
    g, d = stats["median_gap"], stats["median_duration"]
    longest = max(LONGEST_FRACTION * d / g, LONG_MIN_GAPS)
    r_on = min(1.0, max(R_ON_MIN, OPEN_OBSERVATIONS / stats["median_observations"]))
    return {"time_scale": g, "period_init": (math.log(MIN_PERIOD_GAPS), math.log(longest)), "r_on": r_on, **stats}
