"""The series classifier as an aeon estimator: :class:`AeonSequenceClassifier`.

aeon (the time-series toolkit that continues sktime's classification module, whose MiniRocket
``phasedlstm baseline`` uses) registers its classifiers as ``BaseClassifier`` subclasses with
tags for what they handle; this one handles multivariate, unequal-length series with missing
values, so aeon's pipelines, benchmarking and ``check_estimator`` take it as any of its own. It
wraps :class:`phasedlstm.estimators.SequenceClassifier` (the same options); aeon's series are
(channels, timepoints) per case and carry no timestamps, so a step's time is its index. Needs
the optional extra ``baselines`` (aeon).
"""

from __future__ import annotations

import numpy as np
from aeon.classification.base import BaseClassifier

from phasedlstm.estimators import SequenceClassifier

__all__ = ["AeonSequenceClassifier"]


class AeonSequenceClassifier(BaseClassifier):
    """aeon's form of :class:`phasedlstm.estimators.SequenceClassifier` (see the module docstring)."""

    _tags = {
        "capability:multivariate": True,
        "capability:unequal_length": True,
        "capability:missing_values": True,
        "X_inner_type": ["np-list", "numpy3D"],
        "algorithm_type": "deeplearning",
        "python_dependencies": "torch",
    }

    def __init__(self, model="phased", hidden_size=64, num_layers=1, pooling="mean", epochs=30, batch_size=32,
                 lr=1e-3, noise=0.0, validation_fraction=0.2, n_iter_no_change=10, random_state=0):
        self.model = model
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.pooling = pooling
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.noise = noise
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        super().__init__()

    @staticmethod
    def _series(X) -> list:
        """aeon's cases, (channels, timepoints) each, as (timepoints, channels) arrays."""
        return [np.asarray(x, dtype=np.float64).T for x in X]

    def _fit(self, X, y):
        self.classifier_ = SequenceClassifier(
            model=self.model, hidden_size=self.hidden_size, num_layers=self.num_layers, pooling=self.pooling,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, noise=self.noise,
            validation_fraction=self.validation_fraction, n_iter_no_change=self.n_iter_no_change,
            random_state=0 if self.random_state is None else self.random_state)
        self.classifier_.fit(self._series(X), y)
        return self

    def _predict_proba(self, X) -> np.ndarray:
        return self.classifier_.predict_proba(self._series(X))

    def _predict(self, X) -> np.ndarray:
        return self.classifier_.predict(self._series(X))

    @classmethod
    def _get_test_params(cls, parameter_set="default"):
        return {"model": "lstm", "hidden_size": 4, "epochs": 2, "validation_fraction": 0.0}
