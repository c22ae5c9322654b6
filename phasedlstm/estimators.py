"""scikit-learn estimators: :class:`SequenceClassifier` and :class:`SequenceRegressor`.

They train the experiment model (:class:`phasedlstm.models.SequenceModel`) on series held in
memory and follow scikit-learn's API (``fit``, ``predict``, ``predict_proba``, ``score``,
``get_params``/``set_params``), so they work in ``Pipeline``, ``GridSearchCV`` and
``cross_val_score``, and pickle and clone.

``X`` is one of

- a 3-D array (N, T, C): N series of up to T steps of C channels; NaN is a value not observed, and
  a step with every channel NaN is no observation (so shorter series are padded with NaN);
- a 2-D array (N, T): univariate series;
- a list of N arrays (T_i, C) or (T_i,).

``times`` (keyword of ``fit``, ``predict``, ...) gives each step's timestamp in the shape of X
without its channel axis, (N, T) or a list of (T_i,); without it a step's time is its index.
Within a series timestamps must increase. As the command line does, channels are standardised on
the training series, missing values become 0 with indicator channels where the training series
have any, models without a time gate get the gap since the previous observation as a channel,
and a Phased LSTM's time scale is measured on the training series (``period_init="auto"``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_array, column_or_1d
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted
except ImportError as e:  # pragma: no cover - the baselines extra brings scikit-learn
    raise ImportError('phasedlstm.estimators needs scikit-learn: pip install "phasedlstm[baselines]"') from e

from phasedlstm.data.base import split_off
from phasedlstm.data.series import SeriesEncoder

__all__ = ["SequenceClassifier", "SequenceRegressor"]


def _series(X, times=None) -> tuple[list, list]:
    """X (and times) in any accepted form -> per series (times (T_i,) float64, values (T_i, C) float32)."""
    if isinstance(X, (list, tuple)) and len(X) and np.ndim(X[0]) >= 1 and not np.isscalar(X[0]):
        rows = [check_array(np.asarray(x), ensure_all_finite="allow-nan", ensure_2d=False, dtype=np.float64)
                for x in X]
        rows = [r[:, None] if r.ndim == 1 else r for r in rows]
        if any(r.ndim != 2 for r in rows):
            raise ValueError("X as a list holds one (steps, channels) or (steps,) array per series")
    else:  # scikit-learn's checks of an array: sparse, complex, empty, 1-D and infinite inputs are refused
        arr = check_array(X, ensure_all_finite="allow-nan", allow_nd=True, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"X must be (series, steps, channels), (series, steps) or a list of series; got an "
                             f"array of shape {arr.shape}")
        rows = list(arr)
    if not rows:
        raise ValueError("X holds no series")
    if len({r.shape[1] for r in rows}) > 1:
        raise ValueError(f"every series needs the same channels; got {sorted({r.shape[1] for r in rows})}")
    if times is None:
        stamps = [np.arange(len(r), dtype=np.float64) for r in rows]
    else:
        stamps = [np.asarray(t, dtype=np.float64).reshape(-1) for t in times]
        if len(stamps) != len(rows) or any(len(t) != len(r) for t, r in zip(stamps, rows)):
            raise ValueError("times must have the shape of X without its channel axis: one timestamp per step")
    out_t, out_v = [], []
    for i, (t, r) in enumerate(zip(stamps, rows)):
        if np.isinf(r).any():
            raise ValueError(f"series {i} holds an infinite value (NaN marks a value not observed)")
        keep = ~np.isnan(r).all(axis=1)
        if not keep.any():
            raise ValueError(f"series {i} has no observed value")
        t, r = t[keep], r[keep]
        if not np.isfinite(t).all() or (np.diff(t) <= 0).any():
            raise ValueError(f"series {i}: timestamps must be finite and increase within a series")
        out_t.append(t - t[0])
        out_v.append(r.astype(np.float32))
    return out_t, out_v


class _SequenceEstimator(BaseEstimator):
    """The options of the experiment model and of its training; see the module docstring."""

    def __init__(self, model="phased", hidden_size=64, num_layers=1, proj_size=64, pooling="mean", epochs=30,
                 batch_size=32, lr=1e-3, weight_decay=0.0, noise=0.0, clip=10.0, validation_fraction=0.2,
                 n_iter_no_change=10, time_feature="auto", missing="auto", period_init="auto", device="cpu",
                 random_state=0, verbose=False):
        self.model = model
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.proj_size = proj_size
        self.pooling = pooling
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.noise = noise
        self.clip = clip
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.time_feature = time_feature
        self.missing = missing
        self.period_init = period_init
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- what the subclasses say ---------------------------------------------------------------

    def _targets(self, y):  # -> (array the model learns, output size)
        raise NotImplementedError

    def _metric(self, out, y) -> float:  # higher is better, on the validation series
        raise NotImplementedError

    # -- fitting --------------------------------------------------------------------------------

    def fit(self, X, y, times=None):
        from phasedlstm.models import SequenceModel
        from phasedlstm.timescale import auto_time_init
        from phasedlstm.train import make_optimizer, with_input_noise

        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        t, v = _series(X, times)
        y = column_or_1d(y, warn=True)
        if len(y) != len(t):
            raise ValueError(f"y must hold one label per series: {len(t)} series, {len(y)} labels")
        target, out_size = self._targets(y)
        self.n_features_in_ = v[0].shape[1]
        keep, held = split_off(len(t), self.validation_fraction, self.random_state)
        if not len(keep):
            raise ValueError("no training series left after the validation split")
        time_feature = self.time_feature
        if time_feature == "auto":
            time_feature = "none" if self.model == "phased" else "dt"
        self.encoder_ = SeriesEncoder(self.missing, time_feature).fit([t[i] for i in keep], [v[i] for i in keep])
        train = self.encoder_.transform([t[i] for i in keep], [v[i] for i in keep], target[keep])
        val = self.encoder_.transform([t[i] for i in held], [v[i] for i in held], target[held]) if len(held) else None
        rnn = {}
        self.time_scale_ = 1.0
        if self.model == "phased":
            if self.period_init == "auto":
                a = auto_time_init(train.times, train.lengths)
                rnn.update(period_init=a["period_init"], r_on=a["r_on"])
                self.time_scale_ = a["time_scale"]
            else:
                rnn["period_init"] = tuple(self.period_init)
        torch.manual_seed(self.random_state)
        net = SequenceModel(self.model, train.input_size, self.hidden_size, out_size, self.num_layers, self.proj_size,
                            self.pooling, time_scale=self.time_scale_, **rnn).to(self.device)
        params = list(net.parameters())
        opt = make_optimizer(params, self.lr, self.weight_decay)
        gen = torch.Generator().manual_seed(self.random_state)
        best, best_state, waited, self.history_ = -math.inf, None, 0, []
        for epoch in range(self.epochs):
            net.train()
            total, n = 0.0, 0
            for b in train.batches(self.batch_size, shuffle=True, generator=gen):
                x, tt, lengths, yy = (u.to(self.device) for u in b)
                if self.noise > 0:
                    x = with_input_noise(x, lengths, self.noise, gen)
                loss = net.loss(net(x, tt, lengths), yy)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.clip)
                opt.step()
                total, n = total + loss.item() * len(yy), n + len(yy)
            score = self._metric(self._outputs(net, val), val.y) if val is not None else -total / n
            self.history_.append({"epoch": epoch + 1, "train_loss": total / n, "val_score": score})
            if self.verbose:
                print(f"epoch {epoch + 1}/{self.epochs}: train loss {total / n:.4f}, validation {score:.4f}")
            if score > best:
                best, best_state, waited = score, copy.deepcopy(net.state_dict()), 0
            else:
                waited += 1
                if self.n_iter_no_change and waited >= self.n_iter_no_change:
                    break
        net.load_state_dict(best_state)
        self.model_ = net.eval()
        self.best_score_ = best
        return self

    # -- predicting -----------------------------------------------------------------------------

    @torch.no_grad()
    def _outputs(self, net, dataset) -> torch.Tensor:
        net.eval()
        outs = [net(*(u.to(self.device) for u in b[:3])).cpu() for b in dataset.batches(256)]
        return torch.cat(outs)

    def _forward(self, X, times=None) -> torch.Tensor:
        check_is_fitted(self, "model_")
        t, v = _series(X, times)
        if v[0].shape[1] != self.n_features_in_:
            raise ValueError(f"X has {v[0].shape[1]} channels, the estimator was fitted on {self.n_features_in_}")
        return self._outputs(self.model_, self.encoder_.transform(t, v, np.zeros(len(t), dtype=np.int64)))


class SequenceClassifier(ClassifierMixin, _SequenceEstimator):
    """Classifies series with an LSTM-family model; see :mod:`phasedlstm.estimators`.

    ``model``: "lstm", "peephole", "phased", "layernorm" or "batchnorm". Training: Adam (AdamW with
    ``weight_decay``), ``epochs`` at most, stopping after ``n_iter_no_change`` epochs without a
    better accuracy on the seeded ``validation_fraction`` of the series, whose best epoch's weights
    are kept. Attributes after ``fit``: ``classes_``, ``n_features_in_``, ``model_`` (the
    SequenceModel), ``history_``.
    """

    def _targets(self, y):
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y holds {len(self.classes_)} class; a classifier needs two or more")
        return codes.astype(np.int64), len(self.classes_)

    def _metric(self, out, y) -> float:
        return float((out.argmax(1) == y).double().mean())

    def predict_proba(self, X, times=None) -> np.ndarray:
        return torch.softmax(self._forward(X, times).double(), dim=1).numpy()

    def predict(self, X, times=None) -> np.ndarray:
        out = self._forward(X, times)
        return self.classes_[out.argmax(1).numpy()]


class SequenceRegressor(RegressorMixin, _SequenceEstimator):
    """Predicts a number per series (mean squared error); see :class:`SequenceClassifier`. The
    targets are standardised for training; ``predict`` returns them in their own unit."""

    def _targets(self, y):
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y must be finite")
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std()) or 1.0
        return ((y - self.y_mean_) / self.y_std_).astype(np.float32), 1

    def _metric(self, out, y) -> float:
        return -float(((out.squeeze(1) - y) ** 2).mean())

    def predict(self, X, times=None) -> np.ndarray:
        return self._forward(X, times).squeeze(1).double().numpy() * self.y_std_ + self.y_mean_
