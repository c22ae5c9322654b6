"""Datasets of padded sequences and the batches every task yields.

A :class:`SequenceDataset` holds a whole split as padded tensors, so a batch is one
indexing operation (no per-sample Python on the hot path):

- ``x``: (N, T, I) float32, padded at the end with zeros;
- ``times``: (N, T) float64 timestamps; in the padding the last valid timestamp repeats
  (finite and non-decreasing, as the layers require). ``None`` stands for the step index,
  made per batch (it would cost 340 MB as a stored tensor for pixel-wise MNIST);
- ``lengths``: (N,) int64;
- ``y``: (N,) int64 class labels, or float32 regression targets.

Each batch is a :class:`Batch` ``(x, times, lengths, y)`` cut to its longest sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor



class DataError(ValueError):
    """Data that cannot be used (an unknown task, a corrupt or mislabelled file); the message says
    which and what to do."""

class Batch(NamedTuple):
    x: Tensor  # (B, T, I) float32
    times: Tensor  # (B, T) float64
    lengths: Tensor  # (B,) int64
    y: Tensor  # (B,) int64 labels or float32 targets


def padding(lengths: np.ndarray, T: int) -> np.ndarray:
    """(N, T) bool: True at the padded steps (step >= the sequence's length)."""
    return np.arange(T)[None, :] >= np.asarray(lengths)[:, None]


def pad_times(times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Repeat each row's last valid timestamp over its padding (in place; returns it)."""
    last = times[np.arange(len(times)), lengths - 1]
    pad = padding(lengths, times.shape[1])
    times[pad] = np.broadcast_to(last[:, None], times.shape)[pad]
    return times


class SequenceDataset:
    """One split of a task as padded tensors; see the module docstring."""

    def __init__(self, x, times, lengths, y, special=None, group=None):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.times = None if times is None else torch.as_tensor(np.asarray(times, dtype=np.float64))
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        y = np.asarray(y)
        self.y = torch.as_tensor(y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64))
        # optional (N,) bool: samples drawn from a task's special class, for balanced batches
        self.special = None if special is None else torch.as_tensor(np.asarray(special, dtype=bool))
        # optional (N,) int64: the recording each sample (a window) was cut from; evaluation then
        # averages the windows' log-probabilities per recording and scores recordings
        self.group = None if group is None else torch.as_tensor(np.asarray(group, dtype=np.int64))
        N, T = self.x.shape[:2]
        t_shape = (N, T) if self.times is None else tuple(self.times.shape)
        if t_shape != (N, T) or self.lengths.shape != (N,) or self.y.shape[0] != N:
            raise ValueError(f"inconsistent shapes: x {tuple(self.x.shape)}, times {t_shape}, "
                             f"lengths {tuple(self.lengths.shape)}, y {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def input_size(self) -> int:
        return self.x.shape[2]

    def __getitem__(self, index) -> Batch:
        """Samples at ``index`` (a tensor of indices or a slice), cut to their longest sequence."""
        lengths = self.lengths[index]
        T = int(lengths.max())
        x = self.x[index, :T]
        if self.times is None:
            times = torch.arange(T, dtype=torch.float64).expand(x.shape[0], T)
        else:
            times = self.times[index, :T]
        return Batch(x, times, lengths, self.y[index])

    def subset(self, index) -> "SequenceDataset":
        index = torch.as_tensor(index)
        special = None if self.special is None else self.special[index]
        group = None if self.group is None else self.group[index]
        T = int(self.lengths[index].max())
        times = None if self.times is None else self.times[index, :T].numpy()
        return SequenceDataset(self.x[index, :T].numpy(), times, self.lengths[index].numpy(),
                               self.y[index].numpy(), special, group)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                balanced: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Yield batches in order or shuffled (with ``generator`` for reproducibility).

        ``balanced``: every batch takes at least half its samples from the special ones
        (``self.special``), as the frequency task asks. ``shard=(rank, world_size)`` yields
        only this process's share of each epoch (for distributed training).
        """
        for index in self.epoch_order(batch_size, shuffle, generator, balanced, shard):
            yield self[index]

    def epoch_order(self, batch_size, shuffle=False, generator=None, balanced=False, shard=(0, 1)) -> list[Tensor]:
        """The index tensors of one epoch's batches (what :meth:`batches` iterates)."""
        N = len(self)
        if balanced and self.special is not None:
            order = self._balanced_order(batch_size, generator if shuffle else None)
        elif shuffle:
            order = torch.randperm(N, generator=generator)
        else:
            order = torch.arange(N)
        rank, world = shard
        if world > 1:  # every rank gets the same number of batches: drop the ragged end
            per_rank = N // world
            order = order[: per_rank * world].view(-1, world)[:, rank] if per_rank else order[:0]
        return list(order.split(batch_size))

    def _balanced_order(self, batch_size, generator) -> Tensor:
        special = self.special.nonzero().squeeze(1)
        other = (~self.special).nonzero().squeeze(1)
        if generator is not None:
            special = special[torch.randperm(len(special), generator=generator)]
            other = other[torch.randperm(len(other), generator=generator)]
        half = (batch_size + 1) // 2
        n_batches = min(len(special) // half, len(other) // (batch_size - half)) if batch_size > 1 else len(special)
        parts = []
        for b in range(n_batches):
            idx = torch.cat([special[b * half : (b + 1) * half],
                             other[b * (batch_size - half) : (b + 1) * (batch_size - half)]])
            if generator is not None:
                idx = idx[torch.randperm(len(idx), generator=generator)]
            parts.append(idx)
        return torch.cat(parts) if parts else torch.arange(0)


@dataclass
class Task:
    """A task: its splits and what a model needs to know about it.

    ``num_classes`` is 0 for a regression task (``metric`` "mse"); ``baseline`` is the
    metric of a trivial predictor where one is known (the adding problem's 0.167).
    ``info`` records what makes the data reproducible (seed, permutation, scaling, subjects).
    """

    name: str
    train: SequenceDataset
    val: SequenceDataset
    test: SequenceDataset
    num_classes: int
    metric: str = "accuracy"
    balanced: bool = False  # batches with at least half from the special class
    baseline: float | None = None
    time_unit: str = "step"
    info: dict = field(default_factory=dict)
    #: generated tasks in fresh-data mode: epoch -> that epoch's training set (``train`` is epoch 0's)
    train_sampler: Callable[[int], SequenceDataset] | None = None

    def train_for_epoch(self, epoch: int) -> SequenceDataset:
        """The training set of epoch ``epoch`` (0-based): drawn anew from a stream seeded by (seed,
        epoch) in fresh-data mode, so a resumed run draws the same sequences; else ``train``."""
        if self.train_sampler is None or epoch == 0:
            return self.train
        return self.train_sampler(epoch)

    @property
    def input_size(self) -> int:
        return self.train.input_size

    def describe(self) -> str:
        T = int(self.train.lengths.max())
        kind = f"{self.num_classes} classes" if self.num_classes else "regression"
        if self.train.group is not None:
            counts = " / ".join(f"{len(s)} {k}" + (f" (of {len(torch.unique(s.group))})" if len(s) else "")
                                for k, s in (("train", self.train), ("val", self.val), ("test", self.test)))
            return (f"{self.name}: windows of {self.info.get('window')} {self.time_unit}, {counts} recordings, up to "
                    f"{T} steps of {self.input_size}, {kind}")
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"up to {T} steps of {self.input_size}, {kind}, times in {self.time_unit}")


def windows(dataset: SequenceDataset, window: float, stride: float) -> SequenceDataset:
    """Cut every sequence into windows of ``window`` time units (observations with start <= t <
    start + window), their starts ``stride`` apart from the sequence's first timestamp; the last
    window ends at the sequence's end. A sequence shorter than a window is one window. Timestamps
    are kept; each window's ``group`` is its sequence's index (see :func:`phasedlstm.train.evaluate`)."""
    if not (window > 0 and stride > 0 and math.isfinite(window) and math.isfinite(stride)):
        raise ValueError(f"window and stride must be finite and > 0, got {window} and {stride}")
    if dataset.times is None:
        raise ValueError("windows are cut by time: this data set has no timestamps")
    x, times, lengths, y = dataset.x.numpy(), dataset.times.numpy(), dataset.lengths.numpy(), dataset.y.numpy()
    cuts, group = [], []
    for i, n in enumerate(lengths):
        t = times[i, :n]
        first, last = t[0], t[-1]
        starts = list(np.arange(first, last - window, stride)) if last - first > window else []
        starts.append(max(first, last - window))  # the last window ends at the end
        seen = set()
        for s0 in starts:
            lo = int(np.searchsorted(t, s0, "left"))
            hi = int(np.searchsorted(t, s0 + window, "left")) if s0 + window < last else n
            if hi - lo < 1 or (lo, hi) in seen:
                continue
            seen.add((lo, hi))
            cuts.append((i, lo, hi))
            group.append(i)
    T = max(hi - lo for _, lo, hi in cuts)
    wx = np.zeros((len(cuts), T, x.shape[2]), dtype=np.float32)
    wt = np.zeros((len(cuts), T), dtype=np.float64)
    wn = np.array([hi - lo for _, lo, hi in cuts], dtype=np.int64)
    for k, (i, lo, hi) in enumerate(cuts):
        wx[k, : hi - lo] = x[i, lo:hi]
        wt[k, : hi - lo] = times[i, lo:hi]
    pad_times(wt, wn)
    return SequenceDataset(wx, wt, wn, y[[i for i, _, _ in cuts]], None, group)


def split_off(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (keep, held_out) with ``round(fraction * n)`` held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_out = int(round(fraction * n))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])
