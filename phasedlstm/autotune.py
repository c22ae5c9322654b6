"""Which path runs a call, chosen by measurement: like cuDNN's benchmark mode.

The fused kernels share each step among threads in one of two ways: by units (each thread its
block of W_hh's rows, all sequences; the weight gradients as one product over all steps at the
end) or by sequences (each thread its rows, all units); with one thread there is one way. Which
is faster depends on the batch, the hidden size, the threads and whether gradients are needed, and
no fixed threshold is right at every shape (``phasedlstm bench --grid`` shows it). A plain
:class:`phasedlstm.LSTM` has a third candidate: torch's own LSTM on the same parameters
(:mod:`phasedlstm.paths.torch_lstm`).

At the first call of a shape class — the batch and the length rounded up to powers of two, the
input and hidden sizes, the projection, the layers and directions, whether lengths are given, the
dtype, the threads, training (forward and backward) or not — the candidates are timed on a copy of
the call (one warm-up and five alternating runs each, the median kept). A difference of less than
10% is within the noise of one measurement, so every candidate within 10% of the fastest counts as
fast, and among those torch's LSTM serves first (a plain LSTM then runs at torch.nn.LSTM's speed
whichever way the noise fell), then the kernels' fixed rule, then the fastest; it serves every
later call of the class. Torch's LSTM runs every layer in one call, as torch.nn.LSTM does, except
in training with dropout between layers.

The choices live in memory, and those that won by the margin (faster than every other candidate
by 10%) also in a JSON file beside the kernels' build (``choices_file()``), so a new process
reuses them. A choice within the noise is measured again by each process: a measurement taken
while the machine was busy (another run beside it) does not decide for later processes.

Every candidate computes the same equations on the same parameters: a choice changes the numbers
by float rounding only (tests compare every candidate with the reference loop). Turn it off with
``PHASEDLSTM_AUTOTUNE=0`` or ``phasedlstm.autotune.enable(False)`` (the kernels then share steps by
the fixed rule of ``csrc/schedule.h``); ``phasedlstm.autotune.choices()`` says what was chosen.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time

import torch

_enabled = os.environ.get("PHASEDLSTM_AUTOTUNE", "1") != "0"
#: the candidates' names: the kernels sharing a step by their fixed rule (the default), by units or by
#: sequences; the layer's own path where the kernels do not run; torch's LSTM (a plain LSTM)
NAMES = ("rule", "units", "batch", "own", "torch")
#: in the choices file's name: choices made by another version of the candidates are measured again
VERSION = 3
_choices: dict[str, str] | None = None  # loaded from the file at first use


def enable(on: bool = True) -> None:
    """Turn measuring (and delegating to torch's LSTM) on or off for this process."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def choices_file():
    from phasedlstm._build import ext_dir

    return ext_dir().parent / f"autotune-{VERSION}-{ext_dir().name}.json"


def choices() -> dict[str, str]:
    """Shape class -> the path chosen for it (one of :data:`NAMES`)."""
    return dict(_load())


def forget() -> None:
    """Drop every choice (in memory and on disk): the next call of each class measures again."""
    global _choices
    _choices = {}
    try:
        choices_file().unlink()
    except OSError:
        pass


def _load() -> dict:
    global _choices
    if _choices is None:
        try:
            data = json.loads(choices_file().read_text())
            _choices = {k: v for k, v in data.items() if v in NAMES} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _choices = {}
    return _choices


def _save(key: str, name: str) -> None:
    """Add one choice to the file (beside the other processes' choices there)."""
    from phasedlstm._files import atomic_path

    path = choices_file()
    try:
        merged = json.loads(path.read_text()) if path.exists() else {}  # another process's choices too
        if not isinstance(merged, dict):
            merged = {}
    except (OSError, ValueError):
        merged = {}
    merged[key] = name
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # (a read-only cache: the choices stay in memory)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(layer, x, lengths, grad: bool) -> str:
    T, B, I = x.shape
    return (f"{type(layer).__name__} B{_pow2(B)} T{_pow2(T)} I{I} H{layer.hidden_size} P{layer.proj_size} "
            f"L{layer.num_layers}x{2 if layer.bidirectional else 1} len{int(lengths is not None)} "
            f"{str(x.dtype).removeprefix('torch.')} thr{torch.get_num_threads()} {'train' if grad else 'infer'}")


#: timed runs of each candidate (after one warm-up); medians within this factor of the fastest are
#: alike (the run-to-run noise of a small call is several per cent)
RUNS = 5
MARGIN = 0.9
#: served first wherever it is within the margin of the fastest: torch's LSTM, so that a plain LSTM is
#: not left a few per cent behind torch.nn.LSTM (both compute the same equations)
PREFERRED = ("torch",)


def pick(median: dict, default: str | None = None) -> tuple[str, bool]:
    """The candidate to serve, from the measured ``median`` seconds of each, and whether it won by the
    margin: among those within MARGIN of the fastest, a PREFERRED one, else ``default``, else the
    fastest."""
    fastest = min(median, key=median.get)
    alike = [n for n in median if MARGIN * median[n] <= median[fastest]]
    best = next((n for n in (*PREFERRED, default) if n in alike), fastest)
    return best, len(alike) == 1


def choose(key: str, candidates: dict, measure, default: str | None = None) -> str:
    """The name among ``candidates`` that serves the class ``key``: the cached choice, or the one
    :func:`pick` takes from ``measure(name) -> seconds`` (called alternately, one warm-up and RUNS
    runs each)."""
    known = _load().get(key)
    if known in candidates:
        return known
    names = list(candidates)
    for name in names:
        measure(name)  # warm-up: first-call costs (allocation, kernel load) are not the path's
    times = {name: [] for name in names}
    for _ in range(RUNS):
        for name in names:
            times[name].append(measure(name))
    median = {n: statistics.median(times[n]) for n in names}
    best, decisive = pick(median, default)
    _choices[key] = best
    if decisive:  # (a choice within the noise is measured again by the next process)
        _save(key, best)
    return best


@functools.lru_cache(maxsize=None)
def with_split(run, split: str):
    """The path ``run`` with the kernels sharing each step among threads by ``split`` ("units" or
    "batch"); the backward of its training calls runs in the same split (phasedlstm.fast). One
    wrapper per (path, split), made once."""
    from phasedlstm import fast

    code = fast._SPLITS[split]

    def split_run(layer, steps, h, c, p):
        with fast._split(code):
            return run(layer, steps, h, c, p)

    split_run.split = split
    return split_run


def timer(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
