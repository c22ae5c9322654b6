"""Data that cannot silently go wrong: fetched files verified at every load, labels range-checked
with the file named, corrupt streams named, package links refused, leftovers cleaned."""

import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from phasedlstm import LSTM
from phasedlstm._files import data_dir
from phasedlstm.data import DataError, get_task
from phasedlstm.data import fetch as fetch_mod
from phasedlstm.data.idx import write_idx
from phasedlstm.train import TrainConfig, train


def _mnist_copy(tmp_path):
    src = data_dir() / "mnist"
    if not fetch_mod._all_present(src, fetch_mod.MNIST_FILES):
        pytest.skip(f"mnist not fetched into {src.parent} (run `phasedlstm data fetch mnist`)")
    shutil.copytree(src, tmp_path / "mnist")
    return tmp_path


def test_flipped_label_byte_in_fetched_data_is_found_at_load(tmp_path):
    root = _mnist_copy(tmp_path)
    get_task("smnist-rows", data_dir=root, small=True)  # intact: loads
    labels = root / "mnist" / "train-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[1000] = (raw[1000] + 1) % 10  # still a valid label: only the checksum can tell
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{labels}.*not the file that was fetched.*data fetch mnist"):
        get_task("smnist-rows", data_dir=root)


def _idx_folder(tmp_path, train_labels, gz=False):
    folder = tmp_path / "idx"
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 255, (40, 28, 28), dtype=np.uint8))
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", train_labels)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 255, (20, 28, 28), dtype=np.uint8))
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", np.arange(20, dtype=np.uint8) % 10)
    return folder


def test_label_out_of_range_names_the_file_before_training(tmp_path):
    labels = np.arange(40, dtype=np.uint8) % 10
    labels[7] = 255
    folder = _idx_folder(tmp_path, labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 255 at index 7 .* classes 0\.\.9"):
        get_task("smnist-rows", data_path=folder)


def test_corrupt_deflate_stream_names_the_file(tmp_path):
    folder = _idx_folder(tmp_path, np.arange(40, dtype=np.uint8) % 10, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 40] = b"\xff" * 40
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{path}: cannot decompress"):
        get_task("smnist-rows", data_path=folder)


def test_damaged_watch_file_is_found_and_would_be_fetched_again(tmp_path):
    dest = tmp_path / "watch" / "watch.npz"
    dest.parent.mkdir()
    np.savez(dest, X=np.zeros((3, 6), np.float32))
    (dest.parent / "watch.npz.sha256").write_text(fetch_mod.sha256(dest) + "\n")
    assert fetch_mod._watch_ok(dest)
    dest.write_bytes(dest.read_bytes()[:-20])  # truncated
    assert not fetch_mod._watch_ok(dest)  # so `data fetch watch` fetches it again instead of "ready"
    with pytest.raises(DataError, match="watch.npz does not match the checksum"):
        get_task("watch", data_dir=tmp_path)


def test_link_in_a_package_is_refused_before_hashing(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not for you")
    link = tmp_path / "train-images-idx3-ubyte.gz"
    link.symlink_to(secret)
    with pytest.raises(fetch_mod.FetchError) as e:
        fetch_mod._install_file(link, tmp_path / "out" / link.name, "0" * 64)
    assert "not a regular file" in str(e.value) and fetch_mod.sha256(secret) not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_data_dir_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(fetch_mod.FetchError, match="cannot write to the data directory"):
        fetch_mod.fetch("mnist", afile)


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    root = tmp_path
    scratch = root / ".fetch-scratch-abc"
    (scratch / "package").mkdir(parents=True)
    half = root / "mnist" / ".train-images-idx3-ubyte.x1y2.tmp"
    half.parent.mkdir()
    half.write_bytes(b"0" * 100)
    keep = root / "mnist" / "train-images-idx3-ubyte"
    keep.write_bytes(b"1")
    fetch_mod._clean_leftovers(root, root / "mnist")
    assert not scratch.exists() and not half.exists() and keep.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k3j.tmp").write_bytes(b"0" * 100)
    train(TrainConfig(task="adding", model="lstm", hidden_size=4, proj_size=0, epochs=1, batch_size=8,
                      task_options={"length": 6, "n_train": 16, "n_val": 8, "n_test": 8}),
          run, progress=False, log=lambda *a: None)
    assert not list(run.glob(".*.tmp"))


def test_lengths_error_mentions_batch_first():
    m = LSTM(3, 4)
    with pytest.raises(ValueError, match="construct the layer with batch_first=True"):
        m(torch.randn(5, 20, 3), lengths=torch.full((5,), 20))
