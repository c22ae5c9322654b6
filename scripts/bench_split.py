"""The unit split against the batch split (docs/speed.md): for each (B, H), the time of a layer's
forward without gradients and of its training step with the kernels' unit split forced, over the
same with the batch split forced, in one process (the autotuner off), median of the repeats.

    python scripts/bench_split.py [--layer peephole] [--hidden 128,200,256,384,512] [--batch 1,4,8,16,32]

T = 35 steps of I = 32 features, 2 threads unless --threads says otherwise. Below 1.0 the unit
split is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from phasedlstm import autotune, fast
from phasedlstm.bench import _make


def median_time(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    spent = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="peephole", choices=["lstm", "peephole", "layernorm"])
    ap.add_argument("--hidden", default="128,200,256,384,512")
    ap.add_argument("--batch", default="1,4,8,16,32")
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    autotune.enable(False)
    torch.set_num_threads(a.threads)
    print(f"{a.layer}, T = {a.steps}, I = {a.inputs}, {a.threads} threads: unit split / batch split, "
          "forward-only / training")
    for H in (int(v) for v in a.hidden.split(",")):
        for B in (int(v) for v in a.batch.split(",")):
            layer = _make(a.layer, a.inputs, H, "auto")
            x = torch.randn(a.steps, B, a.inputs, requires_grad=True)

            def infer():
                with torch.no_grad():
                    layer(x)

            def train():
                layer(x)[0].sum().backward()

            t = {}
            for split in ("units", "batch"):
                with fast.tuning(split=split):
                    t[split] = (median_time(infer, 9), median_time(train, 5))
            print(f"B = {B}, H = {H}: {t['units'][0] / t['batch'][0]:.2f} / {t['units'][1] / t['batch'][1]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
