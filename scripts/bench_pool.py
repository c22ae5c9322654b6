"""Training steps with the kernels' large buffers on pooled blocks (the default) against fresh
memory from malloc (``PHASEDLSTM_POOL_MIB=0``): median ms and page faults per step of a plain
training loop (one layer, one shape, as a user's loop runs), each in a fresh process, the two
settings alternating.

    python scripts/bench_pool.py [--shapes "64,35,32,200;64,784,1,128"] [--layers lstm,layernorm]
                                 [--rounds 3] [--steps 7] [--threads 2]

Shapes are (B, T, I, H), one layer, time-major. malloc serves the buffers of these sizes by mmap
or from a heap it trims, so without the pool a loop touches fresh pages at every step; how many
depends on the process's history, hence a fresh process per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def child(layer: str, shape: str, steps: int, threads: int) -> None:
    import torch

    from phasedlstm import LSTM, BatchNormLSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM

    torch.set_num_threads(threads)
    B, T, I, H = (int(v) for v in shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(T, B, I, requires_grad=True)
    cls = {"torch": torch.nn.LSTM, "lstm": LSTM, "peephole": PeepholeLSTM, "phased": PhasedLSTM,
           "layernorm": LayerNormLSTM, "batchnorm": BatchNormLSTM}[layer]
    m = cls(I, H)
    ms, faults = [], []
    for s in range(steps + 3):  # (three steps warm up)
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out, _ = m(x)
        out.sum().backward()
        t1, f1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if s >= 3:
            ms.append((t1 - t0) * 1e3)
            faults.append(f1 - f0)
    print(json.dumps({"ms": statistics.median(ms), "faults": statistics.median(faults)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="64,35,32,200;20,35,200,200;64,784,1,128;32,1000,1,110")
    ap.add_argument("--layers", default="lstm,phased,layernorm,batchnorm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        layer, shape = a.child.split(":")
        child(layer, shape, a.steps, a.threads)
        return
    print(f"{a.threads} threads; per step of a training loop, the median over {a.steps} steps and {a.rounds} "
          f"processes each: ms (page faults)")
    print(f"{'(B, T, I, H)':18s} {'layer':10s} {'pooled':>17s} {'fresh memory':>17s} {'ratio':>6s}")
    for shape in a.shapes.split(";"):
        for layer in a.layers.split(","):
            got = {True: [], False: []}
            for _ in range(a.rounds):
                for pool in (True, False):
                    env = {**os.environ, "PHASEDLSTM_POOL_MIB": "1024" if pool else "0"}
                    out = subprocess.run([sys.executable, __file__, "--child", f"{layer}:{shape}", "--steps",
                                          str(a.steps), "--threads", str(a.threads)], env=env, check=True,
                                         capture_output=True, text=True).stdout
                    got[pool].append(json.loads(out.strip().splitlines()[-1]))
            med = {p: (statistics.median(r["ms"] for r in got[p]), statistics.median(r["faults"] for r in got[p]))
                   for p in got}
            (on, f_on), (off, f_off) = med[True], med[False]
            print(f"{shape:18s} {layer:10s} {on:10.1f} ({f_on:5.0f}) {off:10.1f} ({f_off:5.0f}) {on / off:6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
