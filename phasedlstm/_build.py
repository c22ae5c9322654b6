"""Building and loading the fused kernels (csrc/): compiled with ``torch.utils.cpp_extension.load``
against the installed torch on first use (1-2 minutes on 2 cores; one line says when it starts and
ends), cached under ``$PHASEDLSTM_EXT_DIR`` or ``~/.cache/phasedlstm/ext`` in a folder keyed on
torch's version, the CPU's features (``-march=native``) and a hash of the kernel sources, the
flags and torch's folder, so two versions or virtual environments never share a build (two
checkouts run by one environment do); later processes load it in milliseconds. One process builds
at a time (an flock, released by the kernel if the builder dies; a stale lock file of torch's from a
killed build is removed); the others say they are waiting and give up after
``$PHASEDLSTM_BUILD_WAIT`` seconds (600). Nothing is built at install time, so pip's build
isolation never pulls a second torch. Where no compiler is available (or the build fails) the
layers run the reference loop, and a warning says so once (:func:`phasedlstm.fast.usable`).

The operators' Python side (autograd, fake implementations) is :mod:`phasedlstm.fast`, which
registers itself in :data:`ON_LOAD`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

#: the kernels' sources: csrc/*.cpp (compiled, as one extension) and the headers they include
CSRC = Path(__file__).parent / "csrc"


def sources() -> list[Path]:
    """The kernels' files, sorted by name (what the build compiles and what its cache key hashes)."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))
_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None, "warned": False}
#: called once the library is loaded (the operators' fake implementations and autograd)
ON_LOAD: list = []


def _cpu_tag() -> str:
    """A short key of the CPU's instruction-set flags, so a cached -march=native build is never
    loaded on a different CPU."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]


def build_dir() -> Path:
    d = os.environ.get("PHASEDLSTM_EXT_DIR")
    if d:
        return Path(d)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "phasedlstm" / "ext"


def _flags() -> tuple[list[str], list[str]]:
    """The compiler and linker flags of the kernels' build."""
    machine = platform.machine()
    # -ffast-math lets GCC vectorise exp and tanh through glibc's libmvec; it is a compile flag only
    # (never at link time, where it would switch the whole process to flush-to-zero). The kernels
    # clamp every activation's argument so that those vector functions never see an overflow.
    # -fopenmp: at::parallel_for is an OpenMP construct in the headers; without it the loop runs
    # serially. The library links libgomp.so.1, which resolves to the copy torch already loaded.
    cflags = ["-O3", "-ffast-math", "-fopenmp"]
    ldflags = ["-fopenmp"]
    if machine in ("x86_64", "AMD64", "aarch64", "arm64"):
        cflags.append("-march=native" if machine in ("x86_64", "AMD64") else "-mcpu=native")
    if sys.platform.startswith("linux") and machine == "x86_64":
        ldflags.append("-lmvec")  # glibc's vector exp/tanh, which -ffast-math lets GCC call
    return cflags, ldflags


def ext_dir() -> Path:
    """Where this version of the kernels is built: keyed on torch's version, the CPU's flags and a
    hash of the kernel source, the build flags and torch's folder, so two versions or two virtual
    environments never share (and rebuild) one build, two checkouts of one version run by one
    environment share it (it compiles a copy of the source kept inside it), and a changed source
    is never loaded from an old build."""
    cflags, ldflags = _flags()
    # torch's folder too: the build file names its include and library paths, so two virtual
    # environments sharing one folder would rebuild it for each other at every first load (seen:
    # a fresh clone's CI and the main checkout's runs, one to two minutes each time)
    key = b"".join(p.name.encode() + b"\0" + p.read_bytes() + b"\0" for p in sources())
    key += " ".join(cflags + ldflags).encode() + b"\0" + _torch_dir().encode()
    digest = hashlib.sha1(key).hexdigest()[:10]
    return build_dir() / f"torch{torch.__version__.split('+')[0]}-{_cpu_tag()}-{digest}"


def _torch_dir() -> str:
    """Where the installed torch lives (its headers and libraries, which the build names)."""
    return str(Path(torch.__file__).resolve().parent)


#: how long a process waits for another one that is building the kernels, before it gives up
#: (and runs the reference loop with a warning)
BUILD_WAIT_SECONDS = float(os.environ.get("PHASEDLSTM_BUILD_WAIT", "600"))


def _say(msg: str) -> None:
    print(f"phasedlstm: {msg}", file=sys.stderr, flush=True)


def _lock_holder(lock_file) -> str:
    """Who holds the flock on lock_file: the pid from /proc/locks (Linux; the file's own content
    names only the last process that got the lock, which may have released it since), with
    "stopped" when that process is stopped (SIGSTOP, Ctrl-Z: it keeps the lock and never
    finishes its build); elsewhere the pid the holder wrote into the file."""
    lock_file.seek(0)
    written = lock_file.read().strip() or "unknown"
    try:
        st = os.fstat(lock_file.fileno())
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return written
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4411 fe:00:5465246 0 EOF" (a waiter's line reads "1: -> FLOCK ...")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == dev:
            pid = fields[4]
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = ""
            if pid == str(os.getpid()):
                return f"{pid}: this process itself"
            return f"{pid}, stopped: resume it (kill -CONT {pid}) or stop it" if state in ("T", "t") else pid
    return written


def _build() -> None:
    import fcntl
    import time

    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    venv_bin = str(Path(sys.executable).parent)  # where pip's ninja lives
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    cflags, ldflags = _flags()
    directory = ext_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # torch's own build lock (a file named "lock" that it creates and deletes) outlives a killed
    # build and then makes every later process wait forever. Ours is an flock, which the kernel
    # releases when its holder dies; holding it, no other phasedlstm process is building here, so a
    # leftover torch lock is stale and is removed.
    with open(directory / "build.flock", "a+") as lock_file:
        start = time.monotonic()
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # (a process that only loads a finished build holds the lock for a moment too: say
            # nothing unless the wait lasts)
            quiet, said = min(2.0, BUILD_WAIT_SECONDS / 2), False
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not said and time.monotonic() - start > quiet:
                        holder = _lock_holder(lock_file)
                        _say(f"waiting for another process building the fused kernels in {directory} (pid "
                             f"{holder}); giving up after {BUILD_WAIT_SECONDS:.0f} s")
                        said = True
                    if time.monotonic() - start > BUILD_WAIT_SECONDS:
                        holder = _lock_holder(lock_file)
                        raise TimeoutError(f"another process (pid {holder}) held the build lock of {directory} "
                                           f"for over {BUILD_WAIT_SECONDS:.0f} s") from None
                    time.sleep(0.05)
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        (directory / "lock").unlink(missing_ok=True)
        fresh = not (directory / "phasedlstm_fused.so").exists()
        if fresh:
            _say(f"building the fused kernels (1-2 minutes on 2 cores, once per machine and version) in {directory}")
        # build from a copy inside the folder: the folder is keyed on the sources' content, so two
        # checkouts of one version share it, and a build file naming either checkout's path would
        # make ninja rebuild whenever the other one loads it
        compiled = []
        for src in sources():
            copy, code = directory / src.name, src.read_bytes()
            if not copy.exists() or copy.read_bytes() != code:
                tmp = directory / (src.name + f".{os.getpid()}.tmp")
                tmp.write_bytes(code)
                os.replace(tmp, copy)
            if src.suffix == ".cpp":
                compiled.append(str(copy))
        t0 = time.monotonic()
        cpp_extension.load(name="phasedlstm_fused", sources=compiled, extra_cflags=cflags,
                           extra_ldflags=ldflags, build_directory=str(directory), is_python_module=False,
                           verbose=os.environ.get("PHASEDLSTM_EXT_VERBOSE") == "1")
        if fresh:
            _say(f"built the fused kernels in {time.monotonic() - t0:.0f} s")


def load_built() -> bool:
    """Load the kernels if this version is already built for this machine (a dlopen, milliseconds);
    build nothing. ``import phasedlstm`` calls it, so that a program exported with torch.export finds
    the kernels' operators when it is loaded in a fresh process. Building on import would make every
    first import on a new machine wait for the compiler; :func:`load` builds on first use instead.
    Skips (returning False) while another process holds the build lock, and never raises."""
    if _state["loaded"] or _state["error"] is not None or os.environ.get("PHASEDLSTM_NO_EXT") == "1":
        return _state["loaded"]
    try:
        import fcntl

        directory = ext_dir()
        library = directory / "phasedlstm_fused.so"
        if not library.is_file() or (directory / "lock").exists():  # (torch's build lock: load() clears a stale one)
            return False
        with _lock, open(directory / "build.flock", "a+") as lock_file:
            try:  # a shared lock: no process is writing the library now
                fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if not _state["loaded"]:
                torch.ops.load_library(str(library))
                for hook in ON_LOAD:
                    hook()
                _state["loaded"] = True
    except Exception:  # (a damaged build: load() rebuilds it on first use)
        return False
    return _state["loaded"]


def load() -> bool:
    """Build (first time) or load the kernels; True if they are usable. Never raises."""
    if _state["loaded"] or _state["error"] is not None:
        return _state["loaded"]
    with _lock:
        if not (_state["loaded"] or _state["error"] is not None):
            if os.environ.get("PHASEDLSTM_NO_EXT") == "1":
                _state["error"] = "disabled by PHASEDLSTM_NO_EXT=1"
            else:
                try:
                    _build()
                    for hook in ON_LOAD:
                        hook()
                    _state["loaded"] = True
                except Exception as e:  # no compiler, failed build, ...
                    _state["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return _state["loaded"]


# Traced code (torch.compile, torch.export) takes load()'s value at trace time instead of tracing its
# lock, which Dynamo cannot: what torch.compiler.assume_constant_result does, without importing Dynamo
# (half a second) at every `import phasedlstm`.
load._dynamo_marked_constant = True


def unavailable_reason() -> str | None:
    load()
    return _state["error"]
