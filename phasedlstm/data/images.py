"""Sequence views of MNIST-style images: the lecture's sequential MNIST tasks.

- ``rows``: 28 steps of 28 features (one image row per step);
- ``pixels``: 784 steps of 1 feature (one pixel per step, row by row);
- ``permuted``: 784 steps of 1, the pixels in a fixed permutation drawn from
  ``perm_seed`` — the same for train, validation and test, and recorded in ``Task.info``.

Scaling is min-max with the global minimum and maximum of the training split (after the
validation split is carved off): fitted there only, applied to every split. Timestamps
are the step index.
"""

from __future__ import annotations

import numpy as np

from phasedlstm.data.base import SequenceDataset, Task, split_off
from phasedlstm.data.idx import load_idx_folder

VIEWS = ("rows", "pixels", "permuted")
SMALL = (5000, 1000)  # training and test images of the "small" option


def permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def to_sequences(images: np.ndarray, view: str, perm: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) images -> (N, T, I) sequences for ``view``."""
    n, h, w = images.shape
    if view == "rows":
        return images
    flat = images.reshape(n, h * w)
    if view == "permuted":
        flat = flat[:, perm]
    elif view != "pixels":
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    return flat[..., None]


def select_classes(images, labels, classes):
    """Keep ``classes`` and relabel them 0..k-1 in sorted order."""
    classes = sorted(set(int(c) for c in classes))
    keep = np.isin(labels, classes)
    relabel = np.full(int(max(labels.max(), max(classes))) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return images[keep], relabel[labels[keep]]


def _seeded_subset(n, k, seed):
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]) if k < n else np.arange(n)


def image_task(name: str, arrays, view: str = "rows", classes=None, val_fraction: float = 0.1,
               small: bool = False, seed: int = 0, perm_seed: int = 0) -> Task:
    """Build a task from (train_images, train_labels, test_images, test_labels) uint8 arrays."""
    tr_x, tr_y, te_x, te_y = arrays
    tr_y, te_y = tr_y.astype(np.int64), te_y.astype(np.int64)
    all_classes = sorted(set(np.unique(tr_y).tolist()))
    if classes is not None:
        repeated = sorted({int(c) for c in classes if list(classes).count(c) > 1})
        if repeated:
            raise ValueError(f"classes must each be given once, got {list(classes)} (repeated: {repeated})")
        unknown = sorted(set(int(c) for c in classes) - set(all_classes))
        if unknown:
            raise ValueError(f"classes {unknown} are not in the data, whose classes are {all_classes}")
        tr_x, tr_y = select_classes(tr_x, tr_y, classes)
        te_x, te_y = select_classes(te_x, te_y, classes)
    if small:
        i = _seeded_subset(len(tr_x), SMALL[0], seed)
        j = _seeded_subset(len(te_x), SMALL[1], seed + 1)
        tr_x, tr_y, te_x, te_y = tr_x[i], tr_y[i], te_x[j], te_y[j]
    keep, held = split_off(len(tr_x), val_fraction, seed)
    va_x, va_y, tr_x, tr_y = tr_x[held], tr_y[held], tr_x[keep], tr_y[keep]

    # min-max scaling fitted on the training split only
    lo, hi = float(tr_x.min()), float(tr_x.max())
    scale = (hi - lo) if hi > lo else 1.0
    perm = permutation(tr_x.shape[1] * tr_x.shape[2], perm_seed) if view == "permuted" else None

    def make(images, labels):
        x = (to_sequences(images, view, perm).astype(np.float32) - lo) / scale
        return SequenceDataset(x, None, np.full(x.shape[0], x.shape[1]), labels)  # times: the step index

    n_classes = len(classes) if classes is not None else len(all_classes)
    info = {"view": view, "classes": sorted(int(c) for c in classes) if classes is not None else None,
            "val_fraction": val_fraction, "small": small, "seed": seed, "scaling": {"min": lo, "max": hi}}
    if perm is not None:
        info["perm_seed"] = perm_seed
        info["permutation"] = perm.tolist()
    return Task(name=name, train=make(tr_x, tr_y), val=make(va_x, va_y), test=make(te_x, te_y),
                num_classes=n_classes, info=info)


def load_images(folder, prefix: str = ""):
    return load_idx_folder(folder, prefix)
