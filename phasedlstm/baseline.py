"""A non-recurrent baseline for scale: scikit-learn on per-channel statistics of each sequence.

Each sequence (its valid steps) becomes one row: per channel the mean, standard deviation,
minimum, maximum and the 10th, 50th and 90th percentiles, plus the number of samples. Two
classifiers are fitted on the training split — logistic regression on standardised features
and a random forest of 300 trees — and the one with the better validation accuracy is scored
on the test split (the test split is read once, for the chosen one). scikit-learn is an
optional extra: ``pip install "phasedlstm[baselines]"``.
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


def run_baseline(task: str, seed: int = 0, **task_options) -> dict:
    """Fit both classifiers on ``task``'s training split, choose on validation, score on test."""
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
    return {"task": task, "seed": seed, "task_options": task_options, "val_accuracy": val, "chosen": chosen,
            "test_accuracy": float(candidates[chosen].score(*data["test"])), "n_features": data["train"][0].shape[1]}
