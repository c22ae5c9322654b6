"""The Phased LSTM paper's frequency discrimination tasks (Neil et al. 2016, Fig. 3), generated.

Single frequency (``freq-standard``, ``freq-highres``, ``freq-async``): is the period of
x(t) = sin(2 pi t / period - shift) in [5, 6] ms (class 1) or not (class 0)?

- period ~ exp(U(log 1, log 100)) ms; at least half of every batch from the special
  class, period ~ U(5, 6) (a sample from the general distribution that lands in [5, 6]
  is class 1 too);
- duration ~ U(15, 125) ms, start ~ U(0, 125 - duration), shift ~ U(0, duration);
- sampling: standard every 1 ms (ceil(duration) samples, 15-125), high resolution every
  0.1 ms (150-1250), asynchronous N ~ U{15..125} times uniform in the window, sorted.

Superimposed frequencies (``freq-combo``): x(t) = sin(t / p1 - s1) + sin(t / p2 - s2)
(the formula as the paper writes it), class 1 iff p1 in [5, 6] and p2 in [13, 15];
duration ~ U(1, 100), start ~ U(0, 100 - duration), shifts ~ U(0, duration), N ~ U{100..1000}
asynchronous points. Half the samples are special (p1 ~ U(5, 6), p2 ~ U(13, 15)); the rest
draw both periods log-uniformly from [1, 100], as the authors' generator does.
``freq-combo-hard``: of the non-special half a third have only p1 in range, a third only p2,
a third neither, so a model must check both periods.

Protocol: as in the authors' script, every epoch trains on sequences drawn anew (``fresh``,
the default; ``fresh=False`` keeps one fixed training set per seed); validation and test
sets are fixed per seed (500 and 500 by default, every size can be changed), half of each
drawn from the special class; batches are balanced (at least half special) by
:meth:`SequenceDataset.batches`. Sequences are padded at the end (the
authors padded at the front with a mask) and carry ``lengths``. Times are in ms.
With ``time_feature=True`` the timestamp (divided by 100 ms) is appended as a second
input feature, as the paper's LSTM baselines got it.
"""

from __future__ import annotations

import numpy as np

from phasedlstm.data.base import SequenceDataset, Task, pad_times, padding

SPECIAL = (5.0, 6.0)
COMBO_SPECIAL_2 = (13.0, 15.0)
PERIOD_RANGE = (1.0, 100.0)
TIME_FEATURE_SCALE = 100.0  # ms: the time feature is t / 100

SAMPLING = {"standard": 1.0, "highres": 0.1, "async": None}


def _log_uniform(rng, n, lo, hi):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _sample_times(rng, n, start, duration, sampling, n_range):
    """-> times (n, T_max) padded, lengths (n,)."""
    dt = SAMPLING[sampling]
    if dt is not None:
        lengths = np.ceil(duration / dt - 1e-9).astype(np.int64)  # samples in [start, start + duration)
        T = int(lengths.max())
        times = start[:, None] + dt * np.arange(T)[None, :]
    else:
        lengths = rng.integers(n_range[0], n_range[1] + 1, n)
        T = int(lengths.max())
        u = rng.uniform(0.0, 1.0, (n, T))
        u[padding(lengths, T)] = np.inf  # sorted to the end
        u.sort(axis=1)
        times = start[:, None] + duration[:, None] * u
    return pad_times(times, lengths), lengths


def generate_single(n: int, sampling: str, rng: np.random.Generator):
    """n samples of the single-frequency task, the first half special.

    -> (x (n, T, 1), times (n, T), lengths (n,), y (n,), special (n,), periods (n,))."""
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {sorted(SAMPLING)}, got {sampling!r}")
    n_special = (n + 1) // 2
    special = np.arange(n) < n_special
    period = np.where(special, rng.uniform(*SPECIAL, n), _log_uniform(rng, n, *PERIOD_RANGE))
    duration = rng.uniform(15.0, 125.0, n)
    start = rng.uniform(0.0, 1.0, n) * (125.0 - duration)
    shift = rng.uniform(0.0, 1.0, n) * duration
    times, lengths = _sample_times(rng, n, start, duration, sampling, (15, 125))
    x = np.sin(2 * np.pi * times / period[:, None] - shift[:, None])
    x[padding(lengths, times.shape[1])] = 0.0
    y = ((period >= SPECIAL[0]) & (period <= SPECIAL[1])).astype(np.int64)
    return x[..., None], times, lengths, y, special, period


COMBO_VARIANTS = ("authors", "hard")


def generate_combo(n: int, rng: np.random.Generator, variant: str = "authors"):
    """n samples of the superimposed-frequency task, the first half special (p1 ~ U(5, 6), p2 ~ U(13, 15)).

    ``variant``: "authors" (their generator): the other half draws both periods log-uniformly
    from [1, 100]; "hard": of the other half a third has only p1 in range, a third only p2,
    a third neither, so a model must check both periods.

    -> (x (n, T, 1), times, lengths, y, special, periods (n, 2))."""
    if variant not in COMBO_VARIANTS:
        raise ValueError(f"variant must be one of {COMBO_VARIANTS}, got {variant!r}")
    n_special = (n + 1) // 2
    special = np.arange(n) < n_special
    if variant == "authors":
        kind = np.where(special, 0, 3)  # 0: both periods special, 3: both log-uniform
    else:
        kind = np.where(special, 0, 1 + rng.integers(0, 3, n))  # 0 both, 1 only p1, 2 only p2, 3 neither
    p1 = np.where((kind == 0) | (kind == 1), rng.uniform(*SPECIAL, n), _log_uniform(rng, n, *PERIOD_RANGE))
    p2 = np.where((kind == 0) | (kind == 2), rng.uniform(*COMBO_SPECIAL_2, n), _log_uniform(rng, n, *PERIOD_RANGE))
    duration = rng.uniform(1.0, 100.0, n)
    start = rng.uniform(0.0, 1.0, n) * (100.0 - duration)
    s1 = rng.uniform(0.0, 1.0, n) * duration
    s2 = rng.uniform(0.0, 1.0, n) * duration
    times, lengths = _sample_times(rng, n, start, duration, "async", (100, 1000))
    x = np.sin(times / p1[:, None] - s1[:, None]) + np.sin(times / p2[:, None] - s2[:, None])
    x[padding(lengths, times.shape[1])] = 0.0
    in1 = (p1 >= SPECIAL[0]) & (p1 <= SPECIAL[1])
    in2 = (p2 >= COMBO_SPECIAL_2[0]) & (p2 <= COMBO_SPECIAL_2[1])
    y = (in1 & in2).astype(np.int64)
    return x[..., None], times, lengths, y, special, np.stack([p1, p2], 1)


def _dataset(parts, time_feature: bool) -> SequenceDataset:
    x, times, lengths, y, special, _ = parts
    if time_feature:
        feat = times / TIME_FEATURE_SCALE
        feat[padding(lengths, times.shape[1])] = 0.0
        x = np.concatenate([x, feat[..., None]], axis=2)
    return SequenceDataset(x, times, lengths, y, special)


CONDITIONS = ("standard", "highres", "async", "combo", "combo-hard")

#: the rng streams of a task's data, per seed: no split or epoch draws from another's stream
_STREAM = {"train": 0, "val": 1, "test": 2, "fresh": 3}


def stream(seed: int, split: str, *more: int) -> np.random.Generator:
    """The generator a split of seed ``seed`` is drawn from ("fresh" takes the epoch as ``more``)."""
    return np.random.default_rng([seed, _STREAM[split], *more])


def _generate(condition: str, n: int, rng: np.random.Generator):
    if condition == "combo":
        return generate_combo(n, rng, "authors")
    if condition == "combo-hard":
        return generate_combo(n, rng, "hard")
    return generate_single(n, condition, rng)


def _split(condition: str, n: int, rng: np.random.Generator, time_feature: bool) -> SequenceDataset:
    parts = _generate(condition, max(n, 1), rng)
    if n == 0:
        parts = tuple(p[:0] for p in parts)
    return _dataset(parts, time_feature)


def frequency_task(condition: str = "async", seed: int = 0, n_train: int = 5000, n_val: int = 500,
                   n_test: int = 500, time_feature: bool = False, fresh: bool = True) -> Task:
    """The frequency task under ``condition``: "standard", "highres", "async", "combo" (the authors'
    distribution) or "combo-hard".

    ``fresh`` (the authors' protocol, default): every epoch trains on ``n_train`` sequences drawn
    anew from a stream seeded by (seed, epoch) (:meth:`Task.train_for_epoch`), so a resumed run
    draws the same ones; ``fresh=False``: one fixed training set per seed. The validation and
    test sets are fixed, each from its own stream: the test set depends only on ``seed``,
    ``condition`` and ``n_test``, never on the training budget or the epoch.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if v < (0 if name == "n_val" else 2):
            raise ValueError(f"{name} must be >= {0 if name == 'n_val' else 2}, got {v}")

    def rng(split, *more):
        return stream(seed, split, *more)

    def sampler(epoch: int) -> SequenceDataset:
        return _split(condition, n_train, rng("fresh", epoch), time_feature)

    splits = {"train": sampler(0) if fresh else _split(condition, n_train, rng("train"), time_feature),
              "val": _split(condition, n_val, rng("val"), time_feature),
              "test": _split(condition, n_test, rng("test"), time_feature)}
    return Task(name="freq-" + condition, num_classes=2, balanced=True, time_unit="ms",
                info={"seed": seed, "condition": condition, "time_feature": time_feature, "fresh": fresh,
                      "time_feature_scale_ms": TIME_FEATURE_SCALE if time_feature else None},
                train_sampler=sampler if fresh else None, **splits)
