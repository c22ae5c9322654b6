"""Training step with sequences of different lengths: products on the running rows only, or on all.

The fused loops multiply only the sequences still running once a quarter of a thread's
sequences have ended (fast.tuning(running_rows=False) switches that off). This times one training
step (forward + backward) both ways, interleaved in one process, at the lengths of the
frequency tasks (uniform over a range, as their generators draw them), and prints medians and
the ratio. Run it with nothing else on the machine.

Usage: python scripts/bench_lengths.py [--threads 1,2] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch

from phasedlstm import LSTM, PhasedLSTM, fast
from phasedlstm.bench import _median_ms, _Mode  # (the benchmark's interleaved medians)

SHAPES = {  # name: (B, T_min, T_max, I, H)
    "freq-async (15-125 steps)": (32, 15, 125, 2, 110),
    "freq-highres (150-1250 steps)": (32, 150, 1250, 2, 110),
    "freq-combo (100-1000 steps)": (32, 100, 1000, 2, 110),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    if not fast.load():
        raise SystemExit(f"the fused kernels are unavailable: {fast.unavailable_reason()}")
    print(f"torch {torch.__version__}; median ms of a training step, {a.repeats} interleaved repeats")
    print(f"{'threads':>7}  {'lengths':<30} {'layer':<7} {'all rows':>9} {'running':>9} {'ratio':>6}")
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        for name, (B, lo, hi, I, H) in SHAPES.items():
            g = torch.Generator().manual_seed(0)
            lengths = torch.randint(lo, hi + 1, (B,), generator=g)
            lengths[0] = hi
            x = torch.randn(B, hi, I, generator=g)
            times = torch.rand(B, hi, generator=g, dtype=torch.float64).cumsum(1)
            for layer, cls in (("lstm", LSTM), ("phased", PhasedLSTM)):
                m = cls(I, H, batch_first=True)
                kw = {"times": times} if layer == "phased" else {}

                def step(running):
                    with fast.tuning(running_rows=running):
                        out, _ = m(x, lengths=lengths, **kw)
                        out.sum().backward()

                ms = _median_ms([_Mode("all", step, False), _Mode("running", step, True)], "run", a.repeats, 2)
                full, run = ms["all"], ms["running"]
                print(f"{threads:>7}  {name:<30} {layer:<7} {full:9.1f} {run:9.1f} {run / full:6.2f}")


if __name__ == "__main__":
    main()
