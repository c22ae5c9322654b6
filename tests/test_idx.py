"""The IDX reader on tiny files the tests write: round trips and every promised error."""

import struct

import numpy as np
import pytest

from phasedlstm.data.idx import IDXError, find_idx_files, load_idx_folder, read_idx, write_idx


def _images(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("name", ["img-idx3-ubyte", "img-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    a = _images()
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name, expect_magic=2051)
    assert b.dtype == np.uint8 and b.shape == (5, 28, 28)
    np.testing.assert_array_equal(a, b)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "l", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "l", expect_magic=2049), labels)


def test_header_bytes(tmp_path):
    write_idx(tmp_path / "f", _images(3))
    raw = (tmp_path / "f").read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (2051, 3, 28, 28)
    assert len(raw) == 16 + 3 * 784


def test_truncated(tmp_path):
    write_idx(tmp_path / "f", _images(3))
    data = (tmp_path / "f").read_bytes()
    (tmp_path / "f").write_bytes(data[:-100])
    with pytest.raises(IDXError, match=r"f: truncated: 2268 bytes, but the header's dimensions \(3, 28, 28\) need 2368"):
        read_idx(tmp_path / "f")


def test_too_long(tmp_path):
    write_idx(tmp_path / "f", _images(3))
    with open(tmp_path / "f", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(IDXError, match="too long"):
        read_idx(tmp_path / "f")


def test_wrong_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"\x12\x34\x56\x78" + b"\0" * 100)
    with pytest.raises(IDXError, match="f: bad magic number 305419896"):
        read_idx(tmp_path / "f")


def test_labels_where_images_expected(tmp_path):
    write_idx(tmp_path / "f", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IDXError, match="magic number 2049, expected 2051"):
        read_idx(tmp_path / "f", expect_magic=2051)


def test_truncated_header(tmp_path):
    (tmp_path / "f").write_bytes(struct.pack(">I", 2051) + b"\0\0\0\3")
    with pytest.raises(IDXError, match="truncated header"):
        read_idx(tmp_path / "f")


def test_corrupt_gzip(tmp_path):
    write_idx(tmp_path / "f.gz", _images(3))
    data = (tmp_path / "f.gz").read_bytes()
    (tmp_path / "f.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match="f.gz: cannot decompress"):
        read_idx(tmp_path / "f.gz")


def _write_set(folder, gz=False, n_train=6, n_test=4, sep="-"):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train{sep}images-idx3-ubyte{ext}", _images(n_train))
    write_idx(folder / f"train{sep}labels-idx1-ubyte{ext}", np.arange(n_train, dtype=np.uint8) % 3)
    write_idx(folder / f"t10k{sep}images-idx3-ubyte{ext}", _images(n_test, 1))
    write_idx(folder / f"t10k{sep}labels-idx1-ubyte{ext}", np.arange(n_test, dtype=np.uint8) % 3)


@pytest.mark.parametrize("layout", ["", "MNIST/raw", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_folder_layouts(tmp_path, layout, gz):
    _write_set(tmp_path / layout, gz)
    tr_x, tr_y, te_x, te_y = load_idx_folder(tmp_path)
    assert tr_x.shape == (6, 28, 28) and te_x.shape == (4, 28, 28) and len(tr_y) == 6 and len(te_y) == 4


def test_prefixed_emnist_names(tmp_path):
    for split, n in (("train", 6), ("test", 4)):
        write_idx(tmp_path / f"emnist-digits-{split}-images-idx3-ubyte.gz", _images(n))
        write_idx(tmp_path / f"emnist-digits-{split}-labels-idx1-ubyte.gz", np.zeros(n, dtype=np.uint8))
    files = find_idx_files(tmp_path, prefix="emnist-digits-")
    assert files["test_images"].name == "emnist-digits-test-images-idx3-ubyte.gz"


def test_missing_files_listed(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_labels"):
        find_idx_files(tmp_path)


def test_image_label_count_mismatch(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(IDXError, match="holds 6 images but .* holds 5 labels"):
        load_idx_folder(tmp_path)
