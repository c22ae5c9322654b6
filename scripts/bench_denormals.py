"""The backward with denormal floats flushed to zero (the default) against kept, one process,
interleaved, median of the repeats: a loss on h_n alone over T steps, whose gradient shrinks step
by step below float32's smallest normal (1.2e-38).

    python scripts/bench_denormals.py [--T 2000] [--B 50] [--I 2] [--H 64] [--repeats 5] [--threads 1]

Prints, per layer, the backward's median ms with and without the flush and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("T", 2000), ("B", 50), ("I", 2), ("H", 64), ("repeats", 5), ("threads", 1)):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.T, a.B, a.I)
    print(f"backward of a loss on h_n, (T, B, I, H) = ({a.T}, {a.B}, {a.I}, {a.H}), {a.threads} thread(s), "
          f"median of {a.repeats}")
    for cls in (LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM):
        m = cls(a.I, a.H, impl="fast")
        times = {True: [], False: []}
        for _ in range(a.repeats + 1):  # (the first round warms up)
            for flush in (True, False):
                with fast.tuning(flush_denormals=flush):
                    m.zero_grad()
                    _, (h, _) = m(x)
                    t0 = time.perf_counter()
                    h.sum().backward()
                    times[flush].append(time.perf_counter() - t0)
        on, off = (1000 * statistics.median(times[f][1:]) for f in (True, False))
        print(f"  {cls.__name__:14s} flushed {on:9.1f} ms   kept {off:9.1f} ms   kept / flushed {off / on:5.1f}x")


if __name__ == "__main__":
    main()
