"""The kernels' build: never a hang after a killed build, a message while waiting, and one cache
folder per kernel source (two checkouts or versions never load or rebuild each other's build)."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phasedlstm import fast

pytestmark = pytest.mark.skipif(not fast.available(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

LOAD = "from phasedlstm import fast; print('loaded', fast.available())"


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env})


def test_cache_folder_is_keyed_on_the_kernel_source(tmp_path, monkeypatch):
    here = fast.ext_dir()
    copy = tmp_path / "fused_lstm.cpp"
    copy.write_bytes(fast._SOURCE.read_bytes())
    monkeypatch.setattr(fast, "_SOURCE", copy)
    assert fast.ext_dir() == here  # same source, same build
    copy.write_bytes(fast._SOURCE.read_bytes() + b"\n// another version\n")
    assert fast.ext_dir() != here and fast.ext_dir().parent == here.parent


def test_stale_build_lock_of_a_killed_process_does_not_hang():
    """torch's lock file, left by a build killed with SIGKILL, once made every later process wait
    forever; the next process now removes it (holding our flock, no one else is building)."""
    stale = fast.ext_dir() / "lock"
    stale.write_text("")
    r = _python(LOAD)
    assert r.returncode == 0 and "loaded True" in r.stdout, r.stderr
    assert not stale.exists()


def test_waiting_for_a_live_build_says_so_and_gives_up():
    with open(fast.ext_dir() / "build.flock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process "is building"
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        r = _python(LOAD, PHASEDLSTM_BUILD_WAIT="1")
    assert f"waiting for another process building the fused kernels in {fast.ext_dir()} (pid {os.getpid()})" in r.stderr
    assert "loaded False" in r.stdout  # it gave up and runs the reference, with a warning
    assert _python(LOAD).stdout.strip() == "loaded True"  # once the lock is released, all is well
