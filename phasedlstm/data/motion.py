"""Real accelerometer and gyroscope recordings from smartwatches.

``watch``: the seglearn smartwatch exercise recordings — 140 recordings of 10 subjects
doing 7 shoulder exercises, 6 channels (3-axis accelerometer ax, ay, az and gyroscope
wx, wy, wz) at 50 Hz, 947-2618 samples each. Splits are by subject, so no subject is in
two splits: by default a seeded choice of 3 test subjects and 1 validation subject.
Optional ``downsample`` (keep every k-th sample) and ``crop`` (keep the first n samples
after downsampling) make the sequences CPU-sized.

``basic-motions``: BasicMotions (the UEA archive, via sktime's data files) — 6 channels x
100 samples at 10 Hz, 4 classes (standing, running, walking, badminton), its own 40/40
train/test split; the validation set is a seeded part of the training split.

Both: timestamps in seconds from the sampling rate; each channel standardised with the
mean and standard deviation of the training split's valid samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phasedlstm.data.base import SequenceDataset, Task, padding, split_off

WATCH_RATE_HZ = 50.0
BASIC_MOTIONS_RATE_HZ = 10.0


def load_watch_npz(path) -> dict:
    """The converted watch recordings (see :mod:`phasedlstm.data.fetch`): no pickle involved."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    offsets = d.pop("offsets")
    X = d.pop("X")
    d["recordings"] = [X[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return d


def _pad(recordings, rate_hz, downsample, crop):
    recs = [r[::downsample] for r in recordings]
    if crop is not None:
        recs = [r[:crop] for r in recs]
    lengths = np.array([len(r) for r in recs])
    T, C = int(lengths.max()), recs[0].shape[1]
    x = np.zeros((len(recs), T, C), dtype=np.float32)
    for i, r in enumerate(recs):  # once, at load time: 140 recordings
        x[i, : len(r)] = r
    step = np.arange(T, dtype=np.float64) * downsample / rate_hz
    times = np.broadcast_to(step, (len(recs), T)).copy()  # padding: later times, still increasing
    return x, times, lengths


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
               crop: int | None = None) -> Task:
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
    x, times, lengths = _pad(data["recordings"], WATCH_RATE_HZ, downsample, crop)
    y = np.asarray(data["y"], dtype=np.int64)
    raw = {}
    for name, group in (("train", train_subjects), ("val", val_subjects), ("test", test_subjects)):
        m = np.isin(subject, group)
        raw[name] = (x[m], times[m], lengths[m], y[m])
    splits, scaling = _standardise(raw)
    info = {"seed": seed, "subjects": {"train": train_subjects, "val": val_subjects, "test": test_subjects},
            "downsample": downsample, "crop": crop, "rate_hz": WATCH_RATE_HZ / downsample,
            "classes": [str(c) for c in data["y_labels"]], "channels": [str(c) for c in data["X_labels"]],
            "scaling": scaling}
    return Task(name="watch", num_classes=len(data["y_labels"]), time_unit="s", info=info, **splits)


# -- the .ts format of the UEA/UCR archive (sktime's data files) ---------------------------------


def read_ts(path):
    """Read an equal-length multivariate .ts file -> (x (N, T, C) float32, labels (N,) str, class names)."""
    path = Path(path)
    classes, rows, labels = None, [], []
    in_data = False
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                classes = parts[2:] if len(parts) > 2 and parts[1].lower() == "true" else None
            elif low.startswith("@data"):
                in_data = True
            continue
        *dims, label = line.split(":")
        try:
            rows.append([np.array(d.split(","), dtype=np.float32) for d in dims])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: cannot parse a series") from None
        labels.append(label)
    if not rows:
        raise ValueError(f"{path}: no @data section with series")
    lengths = {len(d) for r in rows for d in r}
    if len(lengths) != 1 or len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: series of unequal length or dimension count; only equal-length files are read")
    x = np.stack([np.stack(r, axis=1) for r in rows])  # (N, T, C)
    return x, np.array(labels), classes or sorted(set(labels))


def basic_motions_task(train_file, test_file, seed: int = 0, val_fraction: float = 0.2) -> Task:
    tr_x, tr_lab, classes = read_ts(train_file)
    te_x, te_lab, _ = read_ts(test_file)
    index = {c: i for i, c in enumerate(classes)}
    tr_y = np.array([index[c] for c in tr_lab])
    te_y = np.array([index[c] for c in te_lab])
    keep, held = split_off(len(tr_x), val_fraction, seed)
    T = tr_x.shape[1]
    times = np.arange(T, dtype=np.float64) / BASIC_MOTIONS_RATE_HZ

    def part(x, y):
        return (x, np.broadcast_to(times, (len(x), T)).copy(), np.full(len(x), T), y)

    raw = {"train": part(tr_x[keep], tr_y[keep]), "val": part(tr_x[held], tr_y[held]), "test": part(te_x, te_y)}
    splits, scaling = _standardise(raw)
    info = {"seed": seed, "val_fraction": val_fraction, "classes": list(classes),
            "rate_hz": BASIC_MOTIONS_RATE_HZ, "scaling": scaling}
    return Task(name="basic-motions", num_classes=len(classes), time_unit="s", info=info, **splits)
