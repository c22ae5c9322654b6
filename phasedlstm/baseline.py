"""Non-recurrent baselines for scale.

``statistics``: scikit-learn on per-channel statistics of each sequence. Each sequence (its
valid steps) becomes one row: per channel the mean, standard deviation, minimum, maximum and the
10th, 50th and 90th percentiles, plus the number of samples. Two classifiers are fitted on the
training split — logistic regression on standardised features and a random forest of 300
trees — and the one with the better validation accuracy is scored on the test split (the test
split is read once, for the chosen one).

``minirocket``: MiniRocket (Dempster et al. 2021, aeon's ``MiniRocket`` transform, 10,000
features) with a ridge classifier whose regularisation is chosen by leave-one-out cross
validation, as its authors do. MiniRocket takes regular series of one length, so every series
is first resampled by linear interpolation (per channel, between its observed values; a
channel never observed is 0) onto a grid with the training split's median gap between
observations, from its first to its last timestamp, then padded to the longest training series
by repeating its last value (a longer test series is cut); series shorter than 9 points are
padded to 9. Validation data is not used (the ridge's own cross validation chooses).

Both are optional extras: ``pip install "phasedlstm[baselines]"``.
"""

from __future__ import annotations

import numpy as np

from phasedlstm.data import get_task

STATISTICS = ("mean", "std", "min", "max", "p10", "p50", "p90")


def features(dataset) -> np.ndarray:
    """(N, C * 7 + 1): the statistics of every channel over each sequence's valid steps, and its length."""
    x, lengths = dataset.x.numpy(), dataset.lengths.numpy()
    rows = []
    for i, n in enumerate(lengths):
        v = x[i, :n]
        p10, p50, p90 = np.percentile(v, [10, 50, 90], axis=0)
        rows.append(np.concatenate([v.mean(0), v.std(0), v.min(0), v.max(0), p10, p50, p90, [n]]))
    return np.asarray(rows, dtype=np.float64)


def resampled(dataset, gap: float, length: int | None = None) -> np.ndarray:
    """(N, C, L) float32: each sequence linearly interpolated onto a grid ``gap`` apart (see the
    module docstring), padded (or cut) to ``length`` (default: the longest)."""
    x, times, lengths = dataset.x.numpy(), dataset.times.numpy(), dataset.lengths.numpy()
    series = []
    for i, n in enumerate(lengths):
        t = times[i, :n]
        grid = np.arange(t[0], t[-1] + gap / 2, gap) if n > 1 else t[:1]
        series.append(np.stack([np.interp(grid, t, x[i, :n, c]) for c in range(x.shape[2])]))
    L = max(max(s.shape[1] for s in series), 9) if length is None else length
    out = np.empty((len(series), x.shape[2], L), dtype=np.float32)
    for i, s in enumerate(series):
        m = min(L, s.shape[1])
        out[i, :, :m] = s[:, :m]
        out[i, :, m:] = s[:, m - 1 : m]
    return out


def _minirocket(t, seed: int) -> dict:
    try:
        from aeon.transformations.collection.convolution_based import MiniRocket
        from sklearn.linear_model import RidgeClassifierCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise RuntimeError('the MiniRocket baseline needs aeon: pip install "phasedlstm[baselines]"') from None
    from phasedlstm.timescale import time_statistics

    gap = time_statistics(t.train.times, t.train.lengths)["median_gap"]
    train = resampled(t.train, gap)
    test = resampled(t.test, gap, train.shape[2])
    transform = MiniRocket(random_state=seed, n_jobs=1)
    clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    features = transform.fit_transform(train)
    clf.fit(features, t.train.y.numpy())
    return {"chosen": "minirocket + ridge", "val_accuracy": {},
            "test_accuracy": float(clf.score(transform.transform(test), t.test.y.numpy())),
            "n_features": int(features.shape[1]), "resampled": {"gap": gap, "length": int(train.shape[2])}}


METHODS = ("statistics", "minirocket")


def run_baseline(task: str, seed: int = 0, method: str = "statistics", **task_options) -> dict:
    """``statistics``: fit both classifiers on ``task``'s training split, choose on validation,
    score on test; ``minirocket``: MiniRocket and a ridge classifier (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "minirocket":
        t = get_task(task, seed=seed, **task_options)
        if not t.num_classes:
            raise ValueError(f"the baseline classifies; {task} is a regression task")
        return {"task": task, "seed": seed, "method": method, "task_options": task_options, **_minirocket(t, seed)}
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise RuntimeError('the baseline needs scikit-learn: pip install "phasedlstm[baselines]"') from None
    t = get_task(task, seed=seed, **task_options)
    if not t.num_classes:
        raise ValueError(f"the baseline classifies; {task} is a regression task")
    data = {s: (features(getattr(t, s)), getattr(t, s).y.numpy()) for s in ("train", "val", "test")}
    candidates = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "random forest": RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1),
    }
    val = {}
    for name, clf in candidates.items():
        clf.fit(*data["train"])
        val[name] = float(clf.score(*data["val"])) if len(data["val"][1]) else float("nan")
    chosen = max(val, key=lambda k: (val[k], k == "random forest"))
    return {"task": task, "seed": seed, "method": method, "task_options": task_options, "val_accuracy": val,
            "chosen": chosen,
            "test_accuracy": float(candidates[chosen].score(*data["test"])), "n_features": data["train"][0].shape[1]}
