"""Tasks: the frequency generator's specification, image views and scaling, splits, batches."""

import numpy as np
import pytest
import torch

from phasedlstm.data import TASKS, get_task
from phasedlstm.data.adding import TRIVIAL_MSE, generate_adding
from phasedlstm.data.base import SequenceDataset
from phasedlstm.data.frequency import generate_combo, generate_single
from phasedlstm.data.idx import write_idx
from phasedlstm.data.images import image_task
from phasedlstm.data.motion import watch_task


def _valid(lengths, T):
    return np.arange(T)[None, :] < lengths[:, None]


# -- frequency tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampling, dt, lo, hi", [("standard", 1.0, 15, 125), ("highres", 0.1, 150, 1250)])
def test_regular_sampling(sampling, dt, lo, hi):
    x, times, lengths, y, special, period = generate_single(2000, sampling, np.random.default_rng(0))
    assert lengths.min() >= lo and lengths.max() <= hi
    assert lengths.min() < lo + 10 and lengths.max() > hi - 10 * (hi // 125)  # the whole range is used
    for i in range(50):
        n = lengths[i]
        np.testing.assert_allclose(np.diff(times[i, :n]), dt, rtol=1e-9, atol=1e-9)
    # padding repeats the last timestamp, and x is zero there
    i = int(np.argmin(lengths))
    assert (times[i, lengths[i]:] == times[i, lengths[i] - 1]).all()
    assert (x[i, lengths[i]:] == 0).all()


def test_async_sampling_sorted_in_window():
    rng = np.random.default_rng(1)
    x, times, lengths, y, special, period = generate_single(3000, "async", rng)
    assert lengths.min() == 15 and lengths.max() == 125
    valid = _valid(lengths, times.shape[1])
    assert (np.diff(times, axis=1)[valid[:, 1:]] >= 0).all()
    assert times.min() >= 0 and times.max() <= 125
    spans = times[np.arange(len(times)), lengths - 1] - times[:, 0]
    assert spans.max() <= 125 and spans.max() > 100  # windows up to 125 ms long


def test_standard_sampling_aliases_periods_onto_the_special_range():
    """RESULTS.md's error floor of the standard condition: sampled every 1 ms, a period p in
    [1.2, 1.25] ms (not special) gives exactly the samples of a sine of the special period
    q = p / (p - 1) (sin(2 pi t / p - s) = sin(2 pi t / q - s') at t = t0 + k), so no model can
    tell them apart; about 0.44% of the sequences are such."""
    x, times, lengths, y, special, period = generate_single(200_000, "standard", np.random.default_rng(5))
    alias = (y == 0) & (period >= 1.2) & (period <= 1.25)
    assert abs(alias.mean() - 0.5 * np.log(1.25 / 1.2) / np.log(100)) < 0.0005
    for i in np.flatnonzero(alias)[:50]:
        t, xs = times[i, : lengths[i]], x[i, : lengths[i], 0]
        for q, aliased in ((period[i] / (period[i] - 1), True), (5.5, False)):
            basis = np.stack([np.sin(2 * np.pi * t / q), np.cos(2 * np.pi * t / q)], 1)
            coef = np.linalg.lstsq(basis, xs, rcond=None)[0]
            fits = np.allclose(basis @ coef, xs, atol=1e-6)
            assert fits == aliased and (not aliased or 5.0 <= q <= 6.0)


def test_periods_labels_and_special_half():
    x, times, lengths, y, special, period = generate_single(4000, "async", np.random.default_rng(2))
    assert special.sum() == 2000
    assert ((period[special] >= 5) & (period[special] <= 6)).all()
    assert period.min() >= 1 and period.max() <= 100
    np.testing.assert_array_equal(y, (period >= 5) & (period <= 6))
    # the general class is log-uniform: about half its periods below 10 ms
    assert 0.4 < np.mean(period[~special] < 10) < 0.6
    # the signal is the sine at the sampled times
    i = 7
    n = lengths[i]
    assert np.all(np.abs(x[i, :n, 0]) <= 1)


def test_combo_label_rule():
    x, times, lengths, y, special, periods = generate_combo(3000, np.random.default_rng(3), "hard")
    p1, p2 = periods[:, 0], periods[:, 1]
    np.testing.assert_array_equal(y, (p1 >= 5) & (p1 <= 6) & (p2 >= 13) & (p2 <= 15))
    assert y[special].all()
    assert lengths.min() >= 100 and lengths.max() <= 1000
    # negatives include samples with exactly one period in range, so both must be checked
    only1 = ~special & (p1 >= 5) & (p1 <= 6)
    only2 = ~special & (p2 >= 13) & (p2 <= 15)
    assert only1.sum() > 300 and only2.sum() > 300


def test_combo_authors_distribution():
    """The authors' generator: half special (p1 ~ U(5, 6), p2 ~ U(13, 15)), the other half both
    periods log-uniform on [1, 100] (so log p is uniform on [0, log 100]), duration ~ U(1, 100)."""
    n = 20000
    x, times, lengths, y, special, periods = generate_combo(n, np.random.default_rng(5))
    p1, p2 = periods[:, 0], periods[:, 1]
    assert special.sum() == n // 2 and y[special].all()
    assert (p1[special] >= 5).all() and (p1[special] <= 6).all() and (p2[special] >= 13).all() and (p2[special] <= 15).all()
    for p in (p1[~special], p2[~special]):
        logp = np.log(p) / np.log(100)  # uniform on [0, 1]
        assert logp.min() >= 0 and logp.max() <= 1
        hist = np.histogram(logp, bins=10, range=(0, 1))[0] / len(logp)
        assert np.abs(hist - 0.1).max() < 0.015
    # a negative is positive only by chance: both periods in range, P = log(6/5) log(15/13) / log(100)^2
    chance = np.log(6 / 5) * np.log(15 / 13) / np.log(100) ** 2
    assert abs(y[~special].mean() - chance) < 0.003
    np.testing.assert_array_equal(y, (p1 >= 5) & (p1 <= 6) & (p2 >= 13) & (p2 <= 15))
    span = times[np.arange(n), lengths - 1] - times[:, 0]
    assert span.max() <= 100 and lengths.min() >= 100 and lengths.max() <= 1000


def test_fresh_data_per_epoch():
    """The authors' protocol: every epoch draws its own training sequences, from (seed, epoch) alone,
    so a resumed run (which rebuilds the task) sees the same ones; validation and test never change."""
    a = get_task("freq-async", seed=3, n_train=64, n_test=32)
    b = get_task("freq-async", seed=3, n_train=64, n_test=32)
    e1, e2 = a.train_for_epoch(1), a.train_for_epoch(2)
    assert not torch.equal(e1.x[:, :10], e2.x[:, :10])
    assert not torch.equal(a.train.x[:, :10], e1.x[:, :10])
    torch.testing.assert_close(b.train_for_epoch(2).x, e2.x)  # rebuilt (as on resume): the same draw
    torch.testing.assert_close(b.train_for_epoch(2).times, e2.times)
    assert e2.special.sum() == 32  # half special in every epoch
    big = get_task("freq-async", seed=3, n_train=500, n_test=32)
    torch.testing.assert_close(big.test.x, a.test.x)  # not with the budget
    torch.testing.assert_close(big.val.x, a.val.x)
    fixed = get_task("freq-async", seed=3, n_train=64, fresh=False)
    assert fixed.train_for_epoch(5) is fixed.train
    adding = get_task("adding", length=20, n_train=16, fresh=True)
    assert not torch.equal(adding.train_for_epoch(1).x, adding.train_for_epoch(2).x)


def test_fresh_data_run_resumes_to_the_same_numbers(tmp_path):
    """Killed inside epoch 2 and resumed, a fresh-data run reaches the uninterrupted run's weights."""
    from phasedlstm.train import TrainConfig, load_checkpoint, train
    import phasedlstm.train as tr

    cfg = dict(task="freq-async", model="phased", hidden_size=8, proj_size=4, batch_size=16, epochs=3,
               checkpoint_seconds=0, task_options={"n_train": 64, "n_val": 16, "n_test": 16})
    quiet = dict(progress=False, log=lambda *a: None)
    train(TrainConfig(**cfg), tmp_path / "whole", **quiet)
    real, calls = tr.save_checkpoint, {"n": 0}

    def dying(path, state):
        calls["n"] += 1
        real(path, state)
        if calls["n"] == 7:  # epoch 1: 3 in-epoch + best + last; epoch 2: the 2nd in-epoch checkpoint
            raise KeyboardInterrupt

    tr.save_checkpoint = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(**cfg), tmp_path / "cut", **quiet)
    finally:
        tr.save_checkpoint = real
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    train(None, tmp_path / "cut", resume=True, **quiet)
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_frequency_task_reproducible_and_test_set_fixed():
    a = get_task("freq-async", seed=3, n_train=100)
    b = get_task("freq-async", seed=3, n_train=300)
    c = get_task("freq-async", seed=4, n_train=100)
    torch.testing.assert_close(a.test.x, b.test.x)  # the test set does not depend on the training size
    torch.testing.assert_close(a.test.times, b.test.times)
    assert not torch.equal(a.test.x[:, :10], c.test.x[:, :10])
    d = get_task("freq-async", seed=3, n_train=100)
    torch.testing.assert_close(a.train.x, d.train.x)


def test_balanced_batches_at_least_half_special():
    task = get_task("freq-standard", n_train=400)
    g = torch.Generator().manual_seed(0)
    batches = list(task.train.batches(32, shuffle=True, generator=g, balanced=True))
    special = task.train.special
    assert len(batches) >= 12
    for index in task.train.epoch_order(32, shuffle=True, generator=torch.Generator().manual_seed(0), balanced=True):
        assert special[index].sum() >= 16


def test_time_feature():
    task = get_task("freq-async", n_train=50, time_feature=True)
    assert task.input_size == 2
    b = task.train[torch.arange(10)]
    valid = torch.arange(b.x.shape[1])[None] < b.lengths[:, None]
    torch.testing.assert_close(b.x[..., 1][valid], (b.times / 100.0).float()[valid])


# -- adding -----------------------------------------------------------------------------------


def test_adding_problem():
    x, y = generate_adding(2000, 50, np.random.default_rng(0))
    assert x.shape == (2000, 50, 2)
    assert (x[..., 1].sum(1) == 2).all()
    first = x[..., 1].argmax(1)
    assert (first < 25).all()
    np.testing.assert_allclose(y, (x[..., 0] * x[..., 1]).sum(1), rtol=1e-6)
    assert abs(np.mean((y - 1.0) ** 2) - TRIVIAL_MSE) < 0.02
    task = get_task("adding", length=30, n_train=20, n_val=5, n_test=5)
    assert task.metric == "mse" and task.baseline == pytest.approx(0.1667, abs=1e-3)


# -- image views on tiny IDX files --------------------------------------------------------------


def _tiny_mnist(n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    tr = rng.integers(0, 101, (n_train, 28, 28), dtype=np.uint8)  # training pixels in [0, 100]
    te = rng.integers(0, 201, (n_test, 28, 28), dtype=np.uint8)  # test pixels up to 200
    tr[0, 0, 0], tr[1, 0, 0] = 0, 100
    return tr, np.arange(n_train, dtype=np.uint8) % 10, te, np.arange(n_test, dtype=np.uint8) % 10


def test_views_and_permutation():
    arrays = _tiny_mnist()
    rows = image_task("smnist-rows", arrays, "rows", val_fraction=0.0)
    pixels = image_task("smnist-pixels", arrays, "pixels", val_fraction=0.0)
    perm = image_task("psmnist", arrays, "permuted", val_fraction=0.0, perm_seed=5)
    assert rows.train.x.shape == (60, 28, 28) and pixels.train.x.shape == (60, 784, 1)
    torch.testing.assert_close(pixels.train.x[:, :, 0], rows.train.x.reshape(60, 784))
    p = torch.tensor(perm.info["permutation"])
    assert sorted(p.tolist()) == list(range(784))
    for split in ("train", "test"):  # the same permutation for both splits
        torch.testing.assert_close(getattr(perm, split).x[:, :, 0], getattr(pixels, split).x[:, p, 0])
    again = image_task("psmnist", arrays, "permuted", val_fraction=0.0, perm_seed=5)
    assert again.info["permutation"] == perm.info["permutation"]
    b = rows.train[torch.arange(4)]
    torch.testing.assert_close(b.times, torch.arange(28, dtype=torch.float64).expand(4, 28))


def test_scaling_fitted_on_train_only():
    task = image_task("smnist-rows", _tiny_mnist(), "rows", val_fraction=0.0)
    assert task.info["scaling"] == {"min": 0.0, "max": 100.0}
    assert task.train.x.max() == 1.0
    assert task.test.x.max() == 2.0  # test pixels of 200 scale with the training range: not refitted


def test_class_subset_relabelled():
    task = image_task("smnist-rows", _tiny_mnist(), "rows", classes=[7, 0, 2], val_fraction=0.0)
    assert task.num_classes == 3
    assert sorted(set(task.train.y.tolist())) == [0, 1, 2]
    arrays = _tiny_mnist()
    sevens = (arrays[1] == 7).sum()
    assert (task.train.y == 2).sum() == sevens  # 7 -> 2 (sorted order 0, 2, 7)
    with pytest.raises(ValueError, match=r"classes \[11\] are not in the data"):
        image_task("smnist-rows", _tiny_mnist(), "rows", classes=[1, 11])
    with pytest.raises(ValueError, match=r"each be given once, got \[0, 0, 2\] \(repeated: \[0\]\)"):
        image_task("smnist-rows", _tiny_mnist(), "rows", classes=[0, 0, 2])  # a 3-class head for 2 digits


def test_validation_split_seeded_and_disjoint():
    arrays = _tiny_mnist()
    a = image_task("smnist-rows", arrays, "rows", val_fraction=0.25, seed=1)
    b = image_task("smnist-rows", arrays, "rows", val_fraction=0.25, seed=1)
    c = image_task("smnist-rows", arrays, "rows", val_fraction=0.25, seed=2)
    assert len(a.train) == 45 and len(a.val) == 15
    torch.testing.assert_close(a.val.x, b.val.x)
    assert not torch.equal(a.val.x, c.val.x)
    flat_train = {bytes(v.numpy()) for v in a.train.x.reshape(45, -1)}
    assert not any(bytes(v.numpy()) in flat_train for v in a.val.x.reshape(15, -1))


def test_image_task_from_user_folder(tmp_path):
    tr, tr_y, te, te_y = _tiny_mnist()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", tr)
    write_idx(raw / "train-labels-idx1-ubyte.gz", tr_y)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", te)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", te_y)
    task = get_task("smnist-pixels", data_path=tmp_path, val_fraction=0.0)
    assert task.train.x.shape == (60, 784, 1) and len(task.test) == 20


def test_missing_data_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="phasedlstm data fetch mnist"):
        get_task("smnist-rows", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="phasedlstm data fetch watch"):
        get_task("watch", data_dir=tmp_path)


def test_unknown_task_and_option():
    with pytest.raises(ValueError, match="unknown task 'mnist'.*the tasks: smnist-rows"):
        get_task("mnist")
    with pytest.raises(ValueError, match="task 'adding' does not take classes; it takes seed, length"):
        get_task("adding", classes=[1])


def test_task_names():
    assert set(TASKS) == {"smnist-rows", "smnist-pixels", "psmnist", "fashion-rows", "fashion-pixels",
                          "freq-standard", "freq-highres", "freq-async", "freq-combo", "freq-combo-hard", "adding", "watch",
                          "basic-motions", "japanese-vowels", "nmnist-sim", "nmnist", "ts", "table"}


# -- accelerometer data ----------------------------------------------------------------------------


def _fake_watch(seed=0):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(1, 11), 14)
    recs = [rng.normal(size=(rng.integers(947, 2619), 6)) for _ in subjects]
    return {"recordings": recs, "subject": subjects, "y": np.tile(np.arange(7), 20),
            "y_labels": np.array(["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]),
            "X_labels": np.array(["ax", "ay", "az", "wx", "wy", "wz"])}


def test_watch_split_by_subject():
    data = _fake_watch()
    task = watch_task(data, seed=3)
    s = task.info["subjects"]
    assert len(s["test"]) == 3 and len(s["val"]) == 1 and len(s["train"]) == 6
    assert not (set(s["train"]) & set(s["test"])) and not (set(s["val"]) & set(s["test"]))
    assert len(task.train) == 6 * 14 and len(task.test) == 3 * 14
    fixed = watch_task(data, test_subjects=[1, 2], val_subjects=[3])
    assert fixed.info["subjects"]["test"] == [1, 2] and 1 not in fixed.info["subjects"]["train"]
    with pytest.raises(ValueError, match="both test"):
        watch_task(data, test_subjects=[1], val_subjects=[1])


def test_watch_timestamps_downsample_crop():
    task = watch_task(_fake_watch(), downsample=5, crop=100)
    b = task.train[torch.arange(3)]
    assert b.x.shape[1] == 100 and (b.lengths == 100).all()
    torch.testing.assert_close(b.times[0, :3], torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64))
    full = watch_task(_fake_watch())
    assert full.train.lengths.min() >= 947 and full.train.lengths.max() <= 2618
    torch.testing.assert_close(full.train.times[0, 1] - full.train.times[0, 0], torch.tensor(0.02, dtype=torch.float64))


def test_batches_cut_to_longest_and_sharded():
    ds = SequenceDataset(np.ones((10, 8, 1)), np.tile(np.arange(8.0), (10, 1)), np.arange(1, 11) % 8 + 1,
                         np.zeros(10, dtype=np.int64))
    b = ds[torch.tensor([0, 1])]
    assert b.x.shape[1] == int(max(ds.lengths[0], ds.lengths[1]))
    shards = [torch.cat(ds.epoch_order(3, shard=(r, 2))) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_watch_sample_dropping_keeps_timestamps(tmp_path):
    """The irregular case: a seeded fraction of the samples dropped, the kept ones at their own
    timestamps; the subject split does not move; t or dt as a 7th channel."""
    from phasedlstm.data.motion import watch_task

    rng = np.random.default_rng(0)
    recs = [rng.standard_normal((n, 6)).astype(np.float32) for n in rng.integers(300, 600, 20)]
    data = {"recordings": recs, "subject": np.repeat(np.arange(10), 2), "y": np.arange(20) % 7,
            "y_labels": np.array([str(i) for i in range(7)]), "X_labels": np.array(list("abcdef"))}
    full = watch_task(data, seed=1)
    half = watch_task(data, seed=1, drop=0.5)
    again = watch_task(data, seed=1, drop=0.5)
    assert half.info["subjects"] == full.info["subjects"]
    torch.testing.assert_close(half.train.times, again.train.times)
    kept = half.train.lengths.sum().item() / full.train.lengths.sum().item()
    assert 0.45 < kept < 0.55
    for i in range(len(half.train)):
        n = int(half.train.lengths[i])
        t = half.train.times[i, :n]
        assert (t[1:] > t[:-1]).all()  # strictly increasing: distinct original samples
        steps = t * 50.0  # on the 50 Hz grid of the original samples
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-9)
        # the kept samples are the original ones at those timestamps (before standardisation)
    assert half.input_size == 6
    dt = watch_task(data, seed=1, drop=0.5, time_feature="dt")
    assert dt.input_size == 7
    n = int(dt.train.lengths[0])
    want = torch.diff(dt.train.times[0, :n], prepend=dt.train.times[0, :1]) * 50.0
    torch.testing.assert_close(dt.train.x[0, :n, 6], want.float())
    with pytest.raises(ValueError, match="drop must be in"):
        watch_task(data, drop=1.0)


def test_adding_paper_design_first_marker_in_the_first_tenth_values_centred():
    """The Phased LSTM paper's adding task: values U(-0.5, 0.5), the first marker in the first 10%
    of the sequence, the second in the second half; the trivial MSE stays 2/12."""
    from phasedlstm.data import get_task

    task = get_task("adding", length=500, design="paper", n_train=4000, n_val=10, n_test=10)
    x, y = task.train.x.numpy(), task.train.y.numpy()
    marked = np.argwhere(x[:, :, 1] == 1)
    first, second = marked[0::2, 1], marked[1::2, 1]
    assert len(first) == 4000 and first.max() < 50 and first.max() >= 45
    assert second.min() >= 250 and second.max() == 499
    assert -0.5 <= x[:, :, 0].min() and x[:, :, 0].max() < 0.5
    np.testing.assert_allclose(y, x[np.arange(4000), first, 0] + x[np.arange(4000), second, 0], rtol=1e-6)
    assert abs(y.var() - 2 / 12) < 0.01 and abs(y.mean()) < 0.02
    assert task.info["design"] == "paper"
    lecture = get_task("adding", length=500, n_train=4000, n_val=10, n_test=10)
    assert lecture.train.x[:, :, 0].min() >= 0 and not np.array_equal(lecture.train.x.numpy(), x)
    with pytest.raises(ValueError, match="design must be one of"):
        get_task("adding", design="hard")
