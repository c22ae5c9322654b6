"""Real accelerometer and gyroscope recordings from smartwatches, and the sampling rates of the
fetched UEA sets (read by :mod:`phasedlstm.data.series`).

``watch``: the seglearn smartwatch exercise recordings — 140 recordings of 10 subjects
doing 7 shoulder exercises, 6 channels (3-axis accelerometer ax, ay, az and gyroscope
wx, wy, wz) at 50 Hz, 947-2618 samples each. Splits are by subject, so no subject is in
two splits: by default a seeded choice of 3 test subjects and 1 validation subject.
Optional ``downsample`` (keep every k-th sample) and ``crop`` (keep the first n samples
after downsampling) make the sequences CPU-sized; ``drop`` removes that fraction of the
samples at random (seeded), keeping the others' timestamps: the irregular case the Phased
LSTM is for; ``time_feature`` "t" or "dt" gives models without a time gate the timestamps
as a 7th channel.

Timestamps in seconds from the sampling rate; each channel standardised with the mean and
standard deviation of the training split's valid samples.
"""

from __future__ import annotations

import numpy as np

from phasedlstm.data.base import SequenceDataset, Task, padding
from phasedlstm.data.series import drop_observations

WATCH_RATE_HZ = 50.0
#: BasicMotions: 6 channels x 100 samples at 10 Hz
BASIC_MOTIONS_RATE_HZ = 10.0
#: JapaneseVowels: LPC cepstra of frames 6.4 ms apart (25.6 ms windows of 10 kHz speech)
JAPANESE_VOWELS_RATE_HZ = 1 / 0.0064


def load_watch_npz(path) -> dict:
    """The converted watch recordings (see :mod:`phasedlstm.data.fetch`): no pickle involved."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    offsets = d.pop("offsets")
    X = d.pop("X")
    d["recordings"] = [X[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return d


def _pad(recordings, rate_hz, downsample, crop, drop=0.0, seed=0):
    """Recordings -> x (N, T, C), times (N, T) in s, lengths (N,). ``drop``: each sample (after
    downsample and crop) is dropped with this probability, seeded by ``seed``, keeping at least
    two per recording; the kept samples keep their own timestamps (irregular sampling)."""
    recs = [r[::downsample] for r in recordings]
    if crop is not None:
        recs = [r[:crop] for r in recs]
    stamps = [np.arange(len(r), dtype=np.float64) * downsample / rate_hz for r in recs]
    stamps, recs = drop_observations(stamps, recs, drop, seed)  # (its own stream: the subject split does not move)
    lengths = np.array([len(r) for r in recs])
    T, C = int(lengths.max()), recs[0].shape[1]
    x = np.zeros((len(recs), T, C), dtype=np.float32)
    times = np.zeros((len(recs), T), dtype=np.float64)
    for i, (r, t) in enumerate(zip(recs, stamps)):  # once, at load time: 140 recordings
        x[i, : len(r)] = r
        times[i, : len(r)] = t
        times[i, len(r):] = t[-1]  # padding: the last valid timestamp repeats
    return x, times, lengths


#: the watch task's optional time input: none, t (seconds / 10) or dt (gap in nominal sample periods)
TIME_FEATURES = ("none", "t", "dt")


def _time_feature(x, times, lengths, kind, rate_hz):
    if kind == "none":
        return x
    if kind == "t":
        f = times / 10.0
    else:
        f = np.diff(times, axis=1, prepend=times[:, :1]) * rate_hz  # 1 between neighbours of the full rate
    f[padding(lengths, x.shape[1])] = 0.0
    return np.concatenate([x, f[..., None].astype(np.float32)], axis=2)


def _standardise(splits, train_key="train"):
    x, _, lengths, _ = splits[train_key]
    valid = ~padding(lengths, x.shape[1])
    mean = x[valid].mean(0)
    std = x[valid].std(0)
    std[std == 0] = 1.0
    out = {}
    for k, (x, t, n, y) in splits.items():
        valid = ~padding(n, x.shape[1])[..., None]
        out[k] = SequenceDataset(np.where(valid, (x - mean) / std, 0.0), t, n, y)
    return out, {"mean": mean.tolist(), "std": std.tolist()}


def watch_task(data: dict, seed: int = 0, test_subjects=None, val_subjects=None, downsample: int = 1,
               crop: int | None = None, drop: float = 0.0, time_feature: str = "none") -> Task:
    """``drop``: the irregular case, each sample dropped with this probability (timestamps kept);
    ``time_feature``: append t or dt as a 7th channel (for models without a time gate)."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    if time_feature not in TIME_FEATURES:
        raise ValueError(f"time_feature must be one of {TIME_FEATURES}, got {time_feature!r}")
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be >= 1 or None, got {crop}")
    subject = np.asarray(data["subject"])
    subjects = sorted(set(subject.tolist()))
    order = np.random.default_rng(seed).permutation(subjects).tolist()
    test_subjects = sorted(order[:3] if test_subjects is None else [int(s) for s in test_subjects])
    rest = [s for s in order if s not in test_subjects]
    val_subjects = sorted(rest[:1] if val_subjects is None else [int(s) for s in val_subjects])
    unknown = sorted(set(test_subjects + val_subjects) - set(subjects))
    if unknown:
        raise ValueError(f"subjects {unknown} are not in the data, whose subjects are {subjects}")
    if set(test_subjects) & set(val_subjects):
        raise ValueError(f"a subject cannot be in both test {test_subjects} and validation {val_subjects}")
    train_subjects = sorted(set(subjects) - set(test_subjects) - set(val_subjects))
    x, times, lengths = _pad(data["recordings"], WATCH_RATE_HZ, downsample, crop, drop, seed)
    y = np.asarray(data["y"], dtype=np.int64)
    raw = {}
    for name, group in (("train", train_subjects), ("val", val_subjects), ("test", test_subjects)):
        m = np.isin(subject, group)
        raw[name] = (x[m], times[m], lengths[m], y[m])
    splits, scaling = _standardise(raw)
    if time_feature != "none":
        splits = {k: SequenceDataset(_time_feature(d.x.numpy(), d.times.numpy(), d.lengths.numpy(), time_feature,
                                                   WATCH_RATE_HZ / downsample), d.times.numpy(), d.lengths.numpy(),
                                     d.y.numpy()) for k, d in splits.items()}
    info = {"seed": seed, "subjects": {"train": train_subjects, "val": val_subjects, "test": test_subjects},
            "downsample": downsample, "crop": crop, "rate_hz": WATCH_RATE_HZ / downsample, "drop": drop,
            "time_feature": time_feature,
            "classes": [str(c) for c in data["y_labels"]], "channels": [str(c) for c in data["X_labels"]],
            "scaling": scaling}
    return Task(name="watch", num_classes=len(data["y_labels"]), time_unit="s", info=info, **splits)
