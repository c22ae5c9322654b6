"""The kernels' build: never a hang after a killed build, a message while waiting, and one cache
folder per kernel source (two versions never load or rebuild each other's build; two checkouts
of one version share one without rebuilding it)."""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phasedlstm import _build, fast

pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

LOAD = "from phasedlstm import fast; print('loaded', fast.load())"


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env})


def test_cache_folder_is_keyed_on_the_kernel_source(tmp_path, monkeypatch):
    import shutil

    here = fast.ext_dir()
    copy = tmp_path / "csrc"
    shutil.copytree(fast.CSRC, copy)
    monkeypatch.setattr(_build, "CSRC", copy)
    assert fast.ext_dir() == here  # same sources, same build
    for name in ("lstm_backward.cpp", "gemm.h"):  # a change in any file, header or not
        original = (copy / name).read_bytes()
        (copy / name).write_bytes(original + b"\n// another version\n")
        assert fast.ext_dir() != here and fast.ext_dir().parent == here.parent
        (copy / name).write_bytes(original)
    assert fast.ext_dir() == here


def test_cache_folder_is_keyed_on_torchs_folder(monkeypatch):
    """Two virtual environments with the same torch version: the build file names each one's
    include and library paths, so a shared folder would be rebuilt by each for the other."""
    here = fast.ext_dir()
    monkeypatch.setattr(_build, "_torch_dir", lambda: "/another/venv/lib/python3.11/site-packages/torch")
    assert fast.ext_dir() != here and fast.ext_dir().parent == here.parent


@pytest.mark.slow
def test_stale_build_lock_of_a_killed_process_does_not_hang():
    """torch's lock file, left by a build killed with SIGKILL, would make every later process wait
    forever; the next process removes it (holding our flock, no one else is building)."""
    stale = fast.ext_dir() / "lock"
    stale.write_text("")
    r = _python(LOAD)
    assert r.returncode == 0 and "loaded True" in r.stdout, r.stderr
    assert not stale.exists()


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_waiting_names_the_real_holder_and_says_when_it_is_stopped():
    """The file's content names only the last process that got the lock; the message must name
    the one holding it now (from /proc/locks) and say when it is stopped: a builder stopped with
    SIGSTOP or Ctrl-Z keeps the lock, and every other process would wait for it and give up."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(fast.ext_dir() / 'build.flock')!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nf.seek(0); f.truncate(); f.write('999999999'); f.flush()\n"
         "print('locked', flush=True)\ntime.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        r = _python(LOAD, PHASEDLSTM_BUILD_WAIT="1")
        assert (f"(pid {holder.pid}, stopped: resume it (kill -CONT {holder.pid}) or stop it)" in r.stderr
                and "999999999" not in r.stderr), r.stderr
        assert "loaded False" in r.stdout
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert _python(LOAD).stdout.strip() == "loaded True"  # the lock died with its holder


@pytest.mark.slow
def test_two_checkouts_of_one_version_share_one_build_without_rebuilding(tmp_path):
    """The cache folder is keyed on the source's content, so two checkouts share it; the build
    must name a path that does not depend on the checkout (a copy of the source inside the
    folder), or each checkout's first load rebuilds the other's build (a minute on 2 cores)."""
    import shutil

    root = Path(__file__).parents[1]
    other = tmp_path / "checkout"
    shutil.copytree(root / "phasedlstm", other / "phasedlstm", ignore=shutil.ignore_patterns("__pycache__"))
    for where in (str(root), str(other)):  # load from this checkout, then from the other
        r = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": where})
        assert "loaded True" in r.stdout, r.stderr
    ninja = (fast.ext_dir() / "build.ninja").read_text()
    assert str(fast.ext_dir() / "lstm_forward.cpp") in ninja  # (the venv's include paths may name a checkout)
    assert str(other / "phasedlstm") not in ninja and str(root / "phasedlstm") not in ninja
    r = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(other), "PHASEDLSTM_EXT_VERBOSE": "1"})
    assert "loaded True" in r.stdout and "Building extension" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "ninja: no work to do" in r.stdout + r.stderr or "[1/" not in r.stdout + r.stderr
