"""The adding problem (Hochreiter & Schmidhuber 1997), a long-sequence regression task.

Each step has two features: a value and a marker. Exactly two steps are marked; the target
is the sum of their values. Two designs:

- ``lecture`` (default): values ~ U(0, 1), one marker uniformly in the first half of the
  sequence and one in the second;
- ``paper`` (the Phased LSTM paper's): values ~ U(-0.5, 0.5), the first marker uniformly in the
  first 10% of the sequence (so the value must be held for at least 90% of it), the second
  uniformly in the second half.

Predicting the mean target always gives MSE = Var(u1 + u2) = 2/12 = 0.167 in both: the trivial
baseline reported beside every result. Sequence length T is the knob a length sweep turns (100
to several thousand). Times: the step index.
"""

from __future__ import annotations

import numpy as np

from phasedlstm.data.base import SequenceDataset, Task

TRIVIAL_MSE = 2.0 / 12.0


DESIGNS = ("lecture", "paper")


def generate_adding(n: int, length: int, rng: np.random.Generator, design: str = "lecture"):
    """-> (x (n, length, 2) float32, y (n,) float32)."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    low = 0.0 if design == "lecture" else -0.5
    values = rng.uniform(low, low + 1.0, (n, length)).astype(np.float32)
    half = length // 2
    first = rng.integers(0, half if design == "lecture" else max(1, length // 10), n)
    second = rng.integers(half, length, n)
    markers = np.zeros((n, length), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=2), y


def adding_task(length: int = 200, seed: int = 0, n_train: int = 10000, n_val: int = 1000,
                n_test: int = 1000, fresh: bool = False, design: str = "lecture") -> Task:
    """The adding problem; ``fresh``: every epoch trains on ``n_train`` sequences drawn anew from a
    stream seeded by (seed, length, epoch) (validation and test stay fixed)."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    splits = {}
    tag = [] if design == "lecture" else [DESIGNS.index(design)]  # (the lecture's streams as they always were)
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y = generate_adding(n, length, np.random.default_rng([seed, length, i, *tag]), design)
        splits[split] = SequenceDataset(x, None, np.full(n, length), y)  # times: the step index

    def sampler(epoch: int) -> SequenceDataset:
        x, y = generate_adding(n_train, length, np.random.default_rng([seed, length, 3, epoch, *tag]), design)
        return SequenceDataset(x, None, np.full(n_train, length), y)

    if fresh:
        splits["train"] = sampler(0)
    return Task(name="adding", num_classes=0, metric="mse", baseline=TRIVIAL_MSE,
                info={"seed": seed, "length": length, "fresh": fresh, "design": design},
                train_sampler=sampler if fresh else None, **splits)
