"""Where data lives, and writing files so that a crash never leaves half of one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

#: Environment variable naming the data directory.
DATA_ENV = "PHASEDLSTM_DATA"


def data_dir(path=None) -> Path:
    """The data directory: ``path`` if given, else $PHASEDLSTM_DATA, else the per-user cache
    ($XDG_CACHE_HOME/phasedlstm, by default ~/.cache/phasedlstm)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "phasedlstm"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class atomic_path:
    """``with atomic_path(dest) as tmp:`` write ``tmp``; on success it is renamed to ``dest``,
    on an exception it is removed. The rename is atomic on one filesystem."""

    def __init__(self, dest):
        self.dest = Path(dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".tmp", dir=self.dest.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(self.tmp, 0o644)  # mkstemp makes 0600
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)
        return False
