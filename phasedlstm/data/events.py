"""Event streams of a 34 x 34 event camera: N-MNIST files, and N-MNIST-like streams simulated from MNIST.

An event is (x, y, polarity, t): a pixel whose log intensity rose (polarity 1, ON) or fell
(0, OFF) by a threshold, at t microseconds.

**N-MNIST's files** (Orchard et al., 2015): one binary file per sample, ``Train/<digit>/*.bin``
and ``Test/<digit>/*.bin``; each event is 40 bits, big-endian: x (8 bits), y (8 bits),
polarity (1 bit), timestamp in µs (23 bits). :func:`read_nmnist_file` reads one,
:func:`read_nmnist_folder` a copy of the dataset (it cannot be fetched here: ``--data-path``).

**nmnist-sim** (:func:`simulate_saccades`): the procedure N-MNIST was recorded with, applied to
MNIST's images instead of a sensor on a moving mount. The 28 x 28 digit (intensity/255) lies on a
34 x 34 field and moves in three saccades of 100 ms each along the triangle (3, 0) -> (6, 6) ->
(0, 6) -> (3, 0) (pixel displacements (dx, dy), constant speed, bilinear interpolation); the
field is sampled every millisecond; a pixel emits an event each time its log intensity
log(I + 0.1) has moved one threshold (0.5) away from its level at its last event, ON for a
rise and OFF for a fall, at a time drawn uniformly within that millisecond. Deterministic per
seed. The digit returns to where it started, so ON and OFF events balance.

As sequences (:func:`events_dataset`): ``events`` gives one step per event, its feature the
event's address ``(polarity * 34 + y) * 34 + x`` (one of 2,312; a model embeds it) and its
timestamp in ms; ``frames`` bins the events into frames of ``frame_ms`` with one count per
address and polarity (2,312 features), timestamped at each frame's start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phasedlstm.data.base import DataError, SequenceDataset, Task, split_off

SENSOR = 34
ADDRESSES = SENSOR * SENSOR * 2
EVENT = np.dtype([("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.int64)])
#: the saccades' vertices (dx, dy) in pixels, each saccade's duration, the frame of the simulation
SACCADES = ((3.0, 0.0), (6.0, 6.0), (0.0, 6.0), (3.0, 0.0))
SACCADE_MS = 100
FRAME_US = 1000
THRESHOLD = 0.5
LOG_OFFSET = 0.1
REPRESENTATIONS = ("events", "frames")


def read_nmnist_file(path) -> np.ndarray:
    """One N-MNIST sample: its events in time order (a stable sort: the files are written in order)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path}: no events (an empty file)")
    if raw.size % 5:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of 40-bit events (5 bytes each): "
                        f"the file is truncated or not N-MNIST's format")
    b = raw.reshape(-1, 5).astype(np.int64)
    ev = np.empty(len(b), dtype=EVENT)
    ev["x"], ev["y"] = b[:, 0], b[:, 1]
    ev["p"] = b[:, 2] >> 7
    ev["t"] = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    bad = np.flatnonzero((b[:, 0] >= SENSOR) | (b[:, 1] >= SENSOR))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: event {i} has address ({b[i, 0]}, {b[i, 1]}), outside the {SENSOR} x {SENSOR} "
                        f"sensor: not N-MNIST's format")
    return ev[np.argsort(ev["t"], kind="stable")]


def write_nmnist_file(path, events: np.ndarray) -> None:
    """Events (EVENT records, t < 2^23 µs) in N-MNIST's 40-bit format."""
    t = events["t"].astype(np.int64)
    if len(t) and (t.min() < 0 or t.max() >= 1 << 23):
        raise ValueError("N-MNIST's timestamps are 23 bits: 0 <= t < 8388608 µs")
    out = np.empty((len(events), 5), dtype=np.uint8)
    out[:, 0], out[:, 1] = events["x"], events["y"]
    out[:, 2] = (events["p"].astype(np.int64) << 7) | ((t >> 16) & 0x7F)
    out[:, 3], out[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    Path(path).write_bytes(out.tobytes())


def read_nmnist_folder(root, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """``root/Train`` or ``root/Test`` (split "train" / "test"): the samples of digit folders 0-9, in
    name order, and their labels."""
    folder = Path(root) / {"train": "Train", "test": "Test"}[split]
    digits = [folder / str(d) for d in range(10)]
    if not folder.is_dir() or not any(d.is_dir() for d in digits):
        raise DataError(f"{folder}: expected N-MNIST's layout, {folder.name}/0 ... {folder.name}/9 with one .bin "
                        f"file per sample (--data-path is the folder that holds Train and Test)")
    events, labels = [], []
    for d, sub in enumerate(digits):
        for f in sorted(sub.glob("*.bin")) if sub.is_dir() else []:
            events.append(read_nmnist_file(f))
            labels.append(d)
    if not events:
        raise DataError(f"{folder}: no .bin files in its digit folders")
    return events, np.asarray(labels, dtype=np.int64)


def _displacement(t_ms: float) -> tuple[float, float]:
    k = min(int(t_ms // SACCADE_MS), len(SACCADES) - 2)
    a, b = SACCADES[k], SACCADES[k + 1]
    f = min(max(t_ms / SACCADE_MS - k, 0.0), 1.0)
    return a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])


def _field(images: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """(N, 28, 28) intensities placed at (dx, dy) on the 34 x 34 field, bilinear, zero outside."""
    n, h, w = images.shape
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy
    out = np.zeros((n, SENSOR, SENSOR), dtype=np.float32)
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            if wx * wy == 0:
                continue
            y0, x0 = iy + oy, ix + ox
            out[:, y0:y0 + h, x0:x0 + w] += (wx * wy) * images[:, :SENSOR - y0, :SENSOR - x0]
    return out


def simulate_saccades(images: np.ndarray, seed: int = 0, threshold: float = THRESHOLD,
                      batch: int = 500) -> list[np.ndarray]:
    """The event streams of (N, 28, 28) uint8 images moved in three saccades (module docstring)."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    duration_us = SACCADE_MS * (len(SACCADES) - 1) * 1000
    frames = duration_us // FRAME_US
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch):
        imgs = images[start:start + batch].astype(np.float32) / 255.0
        n = len(imgs)
        level = np.log(_field(imgs, *_displacement(0.0)) + LOG_OFFSET)  # each pixel's level at its last event
        parts = []
        for k in range(1, frames + 1):
            now = np.log(_field(imgs, *_displacement(k * FRAME_US / 1000.0)) + LOG_OFFSET)
            steps = np.trunc((now - level) / threshold).astype(np.int64)  # thresholds crossed, signed
            s, y, x = np.nonzero(steps)
            if len(s):
                count = np.abs(steps[s, y, x])
                rep = np.repeat(np.arange(len(s)), count)
                t = np.full(len(rep), (k - 1) * FRAME_US, dtype=np.int64)  # the frame's start; jitter below
                parts.append((s[rep], x[rep], y[rep], (steps[s, y, x] > 0)[rep], t))
                level[s, y, x] += steps[s, y, x] * threshold
        cat = [np.concatenate(c) for c in zip(*parts)] if parts else [np.zeros(0, np.int64)] * 5
        sample, x, y, p, t = cat
        order = np.lexsort((t, sample))  # (stable: within a frame, in the order the pixels were scanned)
        bounds = np.searchsorted(sample[order], np.arange(n + 1))
        for i in range(n):  # each sample's times drawn from its own stream: the same whatever its batch
            idx = order[bounds[i]:bounds[i + 1]]
            jitter = np.random.default_rng([seed, start + i]).integers(0, FRAME_US, len(idx))
            ev = np.empty(len(idx), dtype=EVENT)
            ev["x"], ev["y"], ev["p"], ev["t"] = x[idx], y[idx], p[idx], t[idx] + jitter
            out.append(ev[np.argsort(ev["t"], kind="stable")])
    return out


def address(events: np.ndarray) -> np.ndarray:
    return (events["p"].astype(np.int64) * SENSOR + events["y"]) * SENSOR + events["x"]


def events_dataset(streams: list[np.ndarray], labels: np.ndarray, representation: str = "events",
                   frame_ms: float = 30.0, max_events: int | None = None, seed: int = 0,
                   time_feature: str = "none", gap_ms: float = 1.0) -> SequenceDataset:
    """Event streams as a padded dataset (module docstring); ``max_events``: a seeded subset of at most
    that many events of each stream (in time order); ``time_feature`` "dt": the gap since the previous
    event kept, in units of ``gap_ms``, as a second feature (events only)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    if any(len(s) == 0 for s in streams):
        raise DataError("a stream has no events")
    if max_events is not None:
        rng = np.random.default_rng(seed)
        streams = [s if len(s) <= max_events else s[np.sort(rng.choice(len(s), max_events, replace=False))]
                   for s in streams]
    n = len(streams)
    width = (2 if time_feature == "dt" else 1) if representation == "events" else ADDRESSES
    if n == 0:  # (an empty split: no validation share)
        return SequenceDataset(np.zeros((0, 1, width), np.float32), np.zeros((0, 1)), np.zeros(0, np.int64),
                               np.zeros(0, np.int64))
    if representation == "events":
        T = max(len(s) for s in streams)
        x = np.zeros((n, T, width), dtype=np.float32)
        times = np.zeros((n, T), dtype=np.float64)
        for i, s in enumerate(streams):
            t_ms = s["t"].astype(np.float64) / 1000.0
            x[i, :len(s), 0] = address(s)
            times[i, :len(s)] = t_ms
            times[i, len(s):] = t_ms[-1]
            if width == 2:
                x[i, 1:len(s), 1] = np.diff(t_ms) / gap_ms
        return SequenceDataset(x, times, [len(s) for s in streams], labels)
    frame_us = frame_ms * 1000.0
    end = max(int(s["t"].max()) for s in streams)
    T = int(end // frame_us) + 1
    x = np.zeros((n, T, ADDRESSES), dtype=np.float32)
    for i, s in enumerate(streams):
        np.add.at(x[i], ((s["t"] // frame_us).astype(np.int64), address(s)), 1.0)
    times = np.broadcast_to(np.arange(T, dtype=np.float64) * frame_ms, (n, T)).copy()
    return SequenceDataset(x, times, np.full(n, T), labels)


def events_task(name: str, train: tuple[list[np.ndarray], np.ndarray], test: tuple[list[np.ndarray], np.ndarray],
                seed: int = 0, val_fraction: float = 0.1, representation: str = "events", frame_ms: float = 30.0,
                max_events: int | None = None, time_feature: str = "none", info: dict | None = None):
    """A classification task of event streams; validation is a seeded share of the training streams.
    The "dt" feature counts in the median gap between events of (up to 1,000) whole training streams,
    measured before ``max_events`` subsamples them."""

    if time_feature not in ("none", "dt"):
        raise ValueError(f"time_feature must be none or dt for event streams, got {time_feature!r}")
    if time_feature == "dt" and representation != "events":
        raise ValueError("time_feature dt applies to representation events (frames are evenly spaced)")
    if not frame_ms > 0:
        raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    streams, labels = train
    keep, held = split_off(len(streams), val_fraction, seed)
    gaps = np.concatenate([np.diff(streams[i]["t"]) for i in keep[:1000]]) / 1000.0
    gap_ms = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1.0
    opts = dict(representation=representation, frame_ms=frame_ms, max_events=max_events, time_feature=time_feature,
                gap_ms=gap_ms)

    def make(idx_streams, idx_labels, salt):
        return events_dataset(idx_streams, idx_labels, seed=seed + salt, **opts)

    return Task(name=name, train=make([streams[i] for i in keep], labels[keep], 0),
                val=make([streams[i] for i in held], labels[held], 1), test=make(test[0], test[1], 2),
                num_classes=10, time_unit="ms",
                info={"seed": seed, "val_fraction": val_fraction, **opts, **(info or {}),
                      "embedding": ADDRESSES if representation == "events" else 0})


def nmnist_sim_task(images_and_labels, seed: int = 0, n_train: int = 6000, n_test: int = 1000, **kw):
    """nmnist-sim: the first ``n_train`` training and ``n_test`` test images of MNIST (a seeded
    choice) as simulated event streams (module docstring)."""
    tr_x, tr_y, te_x, te_y = images_and_labels
    pick = np.random.default_rng(seed)
    i = np.sort(pick.permutation(len(tr_x))[:n_train])
    j = np.sort(pick.permutation(len(te_x))[:n_test])
    train = (simulate_saccades(tr_x[i], seed=seed), tr_y[i].astype(np.int64))
    test = (simulate_saccades(te_x[j], seed=seed + 1), te_y[j].astype(np.int64))
    return events_task("nmnist-sim", train, test, seed=seed, info={
        "n_train": n_train, "n_test": n_test, "threshold": THRESHOLD, "saccades": SACCADES,
        "saccade_ms": SACCADE_MS}, **kw)
