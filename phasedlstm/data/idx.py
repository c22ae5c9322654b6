"""The IDX format of MNIST, EMNIST and Fashion-MNIST: a validating reader, a writer, a folder finder.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data. Images are magic 2051
(uint8, 3 dimensions), labels 2049 (uint8, 1 dimension). Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import zlib
import re
import struct
from pathlib import Path

import numpy as np

from phasedlstm._files import atomic_write_bytes
from phasedlstm.data.base import DataError

# type code -> numpy dtype (big-endian where it matters)
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class IDXError(DataError):
    """A file that is not a valid IDX file; the message names the file and what is wrong."""


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt gzip (deflate) stream
        raise IDXError(f"{path}: cannot decompress (truncated or corrupt): {e}") from None


def read_idx(path, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a NumPy array, validating header and size."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0 or code not in _TYPES or ndim == 0:
        raise IDXError(f"{path}: bad magic number {magic} (0x{magic:08x}); expected an IDX file "
                       f"such as 2051 (images) or 2049 (labels)")
    if expect_magic is not None and magic != expect_magic:
        raise IDXError(f"{path}: magic number {magic}, expected {expect_magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated header: {len(data)} bytes, {ndim} dimensions need {header}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise IDXError(f"{path}: {what}: {len(data)} bytes, but the header's dimensions {dims} "
                       f"need {expected} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 or int8 array as an IDX file (gzip-compressed if the name ends in .gz)."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise TypeError(f"write_idx writes uint8 or int8 arrays, got {array.dtype}")
    payload = struct.pack(">HBB", 0, _CODES[array.dtype], array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(Path(path), payload)


# -- finding the four files in a folder -----------------------------------------------------

_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw", "EMNIST/raw", "mnist", "fashion-mnist")
_PATTERNS = {
    "train_images": re.compile(r"train[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?$"),
    "train_labels": re.compile(r"train[-_.]labels[-_.]idx1[-_.]ubyte(\.gz)?$"),
    "test_images": re.compile(r"(t10k|test)[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?$"),
    "test_labels": re.compile(r"(t10k|test)[-_.]labels[-_.]idx1[-_.]ubyte(\.gz)?$"),
}


def find_idx_files(folder, prefix: str = "") -> dict[str, Path]:
    """The four IDX files of an MNIST-like dataset in ``folder``.

    Looks in the folder itself and in torchvision's layouts (``raw/``, ``MNIST/raw/``,
    ``FashionMNIST/raw/``, ``EMNIST/raw/``); names like ``train-images-idx3-ubyte``,
    ``train-images.idx3-ubyte``, ``t10k-...``, each raw or ``.gz``. ``prefix`` selects
    among several datasets in one folder (EMNIST: ``emnist-balanced-``). Where both a raw
    and a .gz file exist the raw one is used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    best: dict[str, Path] = {}
    for sub in _SUBDIRS:
        d = folder / sub
        if not d.is_dir():
            continue
        names = sorted(os.listdir(d))
        found = {}
        for key, pat in _PATTERNS.items():
            hits = [n for n in names if n.startswith(prefix) and pat.search(n[len(prefix):])]
            hits.sort(key=lambda n: n.endswith(".gz"))  # raw first
            if hits:
                found[key] = d / hits[0]
        if len(found) == 4:
            return found
        if len(found) > len(best):
            best = found
    missing = [k for k in _PATTERNS if k not in best] if best else []
    raise FileNotFoundError(
        f"no MNIST-style IDX files in {folder} (also looked in {', '.join(s for s in _SUBDIRS if s)}): "
        f"expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        f"t10k-labels-idx1-ubyte, raw or .gz{'; missing ' + ', '.join(missing) if missing else ''}"
    )


def load_idx_folder(folder, prefix: str = ""):
    """-> (train_images (N, 28, 28) uint8, train_labels (N,), test_images, test_labels)."""
    files = find_idx_files(folder, prefix)
    arrays = {}
    for key, path in files.items():
        arrays[key] = read_idx(path, expect_magic=2051 if key.endswith("images") else 2049)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise IDXError(f"{files[split + '_images']} holds {n_img} images but "
                           f"{files[split + '_labels']} holds {n_lab} labels")
    # labels are the classes 0..k-1, and the test set has no class the training set lacks
    u = np.unique(arrays["train_labels"])
    gaps = np.flatnonzero(u != np.arange(len(u)))
    k = int(gaps[0]) if gaps.size else len(u)  # the classes 0..k-1 are present without a gap
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        bad = np.flatnonzero(labels >= k)
        if bad.size:
            raise IDXError(f"{files[split + '_labels']}: label {int(labels[bad[0]])} at index {int(bad[0])} (and "
                           f"{bad.size - 1} more) is outside the classes 0..{k - 1} that the training labels hold "
                           f"without gaps; "
                           f"the file is damaged or not a label file of this dataset")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
