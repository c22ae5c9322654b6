"""Against the real files, where `phasedlstm data fetch NAME` has put them (skipped otherwise).

CI fetches them first (see .ci/run); locally run `phasedlstm data fetch mnist` etc.
"""

import numpy as np
import pytest

from phasedlstm._files import data_dir
from phasedlstm.data import get_task

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _need(name, marker):
    if not (data_dir() / name / marker).exists():
        pytest.skip(f"{name} not fetched into {data_dir()} (run `phasedlstm data fetch {name}`)")


@pytest.mark.slow
def test_mnist():
    _need("mnist", "t10k-labels-idx1-ubyte")
    task = get_task("smnist-rows", val_fraction=0.0)
    assert task.train.x.shape == (60000, 28, 28) and task.test.x.shape == (10000, 28, 28)
    assert np.bincount(task.train.y.numpy()).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(task.test.y.numpy()).tolist() == MNIST_TEST_COUNTS
    assert task.info["scaling"] == {"min": 0.0, "max": 255.0}
    assert float(task.train.x.min()) == 0.0 and float(task.train.x.max()) == 1.0


@pytest.mark.slow
def test_fashion_mnist():
    _need("fashion-mnist", "t10k-labels-idx1-ubyte.gz")
    task = get_task("fashion-pixels", val_fraction=0.0)
    assert task.train.x.shape == (60000, 784, 1) and task.test.x.shape == (10000, 784, 1)
    assert np.bincount(task.train.y.numpy()).tolist() == [6000] * 10
    assert np.bincount(task.test.y.numpy()).tolist() == [1000] * 10


@pytest.mark.slow
def test_watch():
    _need("watch", "watch.npz")
    task = get_task("watch")
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 140 and task.num_classes == 7 and task.input_size == 6
    lengths = np.concatenate([s.lengths.numpy() for s in (task.train, task.val, task.test)])
    assert lengths.min() == 947 and lengths.max() == 2618
    s = task.info["subjects"]
    assert not set(s["train"]) & set(s["test"])


@pytest.mark.slow
def test_basic_motions():
    _need("basic-motions", "BasicMotions_TEST.ts")
    task = get_task("basic-motions", val_fraction=0.0)
    assert len(task.train) == 40 and len(task.test) == 40
    assert task.train.x.shape == (40, 100, 6) and task.num_classes == 4
    assert np.bincount(task.test.y.numpy()).tolist() == [10, 10, 10, 10]


@pytest.mark.slow
def test_committed_rows_models_score_what_results_states_with_data_read_independently():
    """scripts/check_rows_models.py reads the MNIST test set with its own IDX parser and runs the
    committed rows models (LSTM and Phased LSTM of rows-10, the LSTM with last-step pooling, the
    two-layer LN-LSTM) from their equations in plain torch: the accuracies must equal those the
    runs recorded (RESULTS.md §2.2 states them: 98.31%, 97.56%, 98.79%, 99.10%)."""
    import subprocess
    import sys
    from pathlib import Path

    _need("mnist", "t10k-labels-idx1-ubyte")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "scripts" / "check_rows_models.py"), "--mnist",
                        str(data_dir() / "mnist")], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test accuracy 0.9831 read independently" in r.stdout
    assert "test accuracy 0.9756 read independently" in r.stdout
    assert "test accuracy 0.9879 read independently" in r.stdout
    assert "test accuracy 0.9910 read independently" in r.stdout


@pytest.mark.slow
def test_japanese_vowels():
    """The UEA archive's JapaneseVowels through the .ts reader: 270 / 370 series of 7-29 frames."""
    _need("japanese-vowels", "JapaneseVowels_TEST.ts")
    task = get_task("japanese-vowels", val_fraction=0.0)
    assert len(task.train) == 270 and len(task.test) == 370 and task.num_classes == 9 and task.input_size == 12
    lengths = np.concatenate([task.train.lengths.numpy(), task.test.lengths.numpy()])
    assert lengths.min() == 7 and lengths.max() == 29
    assert np.bincount(task.train.y.numpy()).tolist() == [30] * 9
    assert not task.info["missing_indicators"]
