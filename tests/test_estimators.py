"""The scikit-learn estimators: fit/predict on series in every accepted form, determinism, pickling
and cloning, Pipeline / GridSearchCV / cross_val_score, and scikit-learn's own estimator checks."""

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the optional extra baselines (scikit-learn) is not installed")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

from phasedlstm.estimators import SequenceClassifier, SequenceRegressor  # noqa: E402

SMALL = dict(hidden_size=16, proj_size=8, epochs=15, batch_size=16, lr=1e-2, n_iter_no_change=0)


def _series(n=60, seed=0):
    """Two classes of irregularly sampled sines (1 Hz against 3 Hz), 2 channels, 20-40 observations;
    returns (list of (T_i, 2) arrays, list of (T_i,) times, labels as strings, frequencies)."""
    rng = np.random.default_rng(seed)
    X, T, y = [], [], []
    for i in range(n):
        c = i % 2
        t = np.sort(rng.uniform(0, 2, rng.integers(20, 40)))
        f = 1.0 + 2.0 * c
        X.append(np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1) + 0.1 * rng.standard_normal((len(t), 2)))
        T.append(t)
        y.append("ab"[c])
    return X, T, np.array(y)


def _padded(X, T):
    L = max(len(x) for x in X)
    A = np.full((len(X), L, X[0].shape[1]), np.nan)
    B = np.zeros((len(X), L))
    for i, (x, t) in enumerate(zip(X, T)):
        A[i, : len(x)], B[i, : len(t)] = x, t
        B[i, len(t):] = t[-1] + 1 + np.arange(L - len(t))  # (not read: those steps are all NaN)
    return A, B


@pytest.mark.parametrize("model", ["lstm", "phased"])
def test_classifier_learns_and_predicts_in_every_form(model):
    X, T, y = _series()
    clf = SequenceClassifier(model=model, **{**SMALL, "epochs": 40}).fit(X[:40], y[:40], times=T[:40])
    assert list(clf.classes_) == ["a", "b"] and clf.n_features_in_ == 2
    pred = clf.predict(X[40:], times=T[40:])
    assert (pred == y[40:]).mean() >= 0.8
    proba = clf.predict_proba(X[40:], times=T[40:])
    assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1)
    A, B = _padded(X[40:], T[40:])  # the same series as a NaN-padded array
    np.testing.assert_allclose(clf.predict_proba(A, times=B), proba, rtol=1e-5, atol=1e-6)


def test_same_seed_same_model_and_pickle_and_clone():
    X, T, y = _series()
    a = SequenceClassifier(model="phased", **SMALL).fit(X, y, times=T)
    b = SequenceClassifier(model="phased", **SMALL).fit(X, y, times=T)
    np.testing.assert_array_equal(a.predict_proba(X, times=T), b.predict_proba(X, times=T))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.predict_proba(X, times=T), a.predict_proba(X, times=T))
    fresh = clone(a)
    assert fresh.get_params() == a.get_params() and not hasattr(fresh, "model_")


def test_pipeline_grid_search_and_cross_validation():
    X, T, y = _series(n=40)
    A, _ = _padded(X, T)
    pipe = make_pipeline(FunctionTransformer(lambda Z: Z * 2.0), SequenceClassifier(model="lstm", **SMALL))
    assert pipe.fit(A, y).score(A, y) > 0.6
    grid = GridSearchCV(SequenceClassifier(model="lstm", **SMALL), {"hidden_size": [4, 16]}, cv=2).fit(A, y)
    assert grid.best_params_["hidden_size"] in (4, 16) and len(grid.cv_results_["mean_test_score"]) == 2
    scores = cross_val_score(SequenceClassifier(model="lstm", **SMALL), A, y, cv=2)
    assert scores.shape == (2,)


def test_regressor_predicts_in_the_targets_unit():
    X, T, _ = _series(n=60)
    y = np.array([100.0 + 50.0 * float(x[:, 0].mean()) for x in X])
    reg = SequenceRegressor(model="lstm", **{**SMALL, "epochs": 30}).fit(X[:45], y[:45], times=T[:45])
    pred = reg.predict(X[45:], times=T[45:])
    assert abs(pred.mean() - 100) < 15  # in the targets' unit, not standardised
    assert np.corrcoef(pred, y[45:])[0, 1] > 0.5


def test_errors_say_what_is_expected():
    X, T, y = _series(n=20)
    clf = SequenceClassifier(model="lstm", **SMALL)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    with pytest.raises(ValueError, match="timestamps must be finite and increase"):
        clf.fit(X, y, times=[t[::-1] for t in T])
    with pytest.raises(ValueError, match="one label per series: 20 series, 19 labels"):
        clf.fit(X, y[:19])
    clf.fit(X, y, times=T)
    with pytest.raises(ValueError, match="X has 3 channels, the estimator was fitted on 2"):
        clf.predict([np.zeros((5, 3))])
    with pytest.raises(ValueError, match="no observed value"):
        clf.predict([np.full((5, 2), np.nan)])


#: scikit-learn's checks that do not hold for estimators of series, and why
EXPECTED_FAILURES = {
    "check_n_features_in_after_fitting": "a 2-D X is N univariate series of T steps: n_features_in_ counts "
                                         "channels (1), not steps, and series of another length are valid input",
    "check_n_features_in": "the same: n_features_in_ is the number of channels",
    "check_estimators_nan_inf": "NaN marks a value not observed (infinite values are refused)",
    "check_classifiers_train": "a 2-D X of another width is series of another length, valid input; and a few "
                               "epochs on the checks' blobs do not reach their accuracy bar",
    "check_regressors_train": "the same as check_classifiers_train",
}


@pytest.mark.slow
@pytest.mark.parametrize("est", [SequenceClassifier, SequenceRegressor])
def test_scikit_learn_estimator_checks(est):
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est(model="lstm", epochs=3, hidden_size=8, proj_size=4, validation_fraction=0.0),
                                  on_fail=None, expected_failed_checks=EXPECTED_FAILURES)
    failed = sorted({r["check_name"] for r in results if r["status"] == "failed"})
    assert failed == [], failed
    assert sum(r["status"] == "passed" for r in results) >= 40


@pytest.mark.slow
def test_the_snippets_of_docs_integrations_run(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).parent.parent / "docs" / "integrations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    for code in blocks:
        exec(compile(code, "docs/integrations.md", "exec"), {})


@pytest.mark.slow
def test_aeon_classifier_passes_aeons_checks_and_takes_unequal_series():
    pytest.importorskip("aeon", reason="the optional extra baselines (aeon) is not installed")
    from aeon.testing.estimator_checking import check_estimator

    from phasedlstm.aeon_classifier import AeonSequenceClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(AeonSequenceClassifier, raise_exceptions=False)
    assert len(results) >= 20 and all(v == "PASSED" for v in results.values()), \
        {k: v for k, v in results.items() if v != "PASSED"}
    X, _, y = _series(n=40)
    cases = [x.T for x in X]  # aeon's form: (channels, timepoints), unequal lengths
    cases[3][0, 5] = np.nan
    clf = AeonSequenceClassifier(model="phased", hidden_size=16, epochs=40, lr=1e-2, n_iter_no_change=0)
    clf.fit(cases[:30], y[:30])
    assert list(clf.classes_) == ["a", "b"] and clf.predict_proba(cases[30:]).shape == (10, 2)
    assert (clf.predict(cases[30:]) == y[30:]).mean() >= 0.7


@pytest.mark.slow
def test_a_pipeline_on_a_real_dataset():
    """make_pipeline(SequenceClassifier(model="phased")) on JapaneseVowels' own split, read with the
    library's .ts reader (skipped where it has not been fetched)."""
    from phasedlstm._files import data_dir
    from phasedlstm.data.series import read_ts

    folder = data_dir() / "japanese-vowels"
    if not (folder / "JapaneseVowels_TEST.ts").exists():
        pytest.skip("japanese-vowels not fetched (phasedlstm data fetch japanese-vowels)")
    train, test = (read_ts(folder / f"JapaneseVowels_{s}.ts") for s in ("TRAIN", "TEST"))
    pipe = make_pipeline(SequenceClassifier(model="phased", epochs=30, pooling="last", noise=1.0, random_state=0))
    pipe.fit(train.values, train.labels, sequenceclassifier__times=train.times)
    assert pipe.score(test.values, test.labels) > 0.85
