"""One layer against torch.nn.LSTM at one shape: a training step (forward and the backward of the
output's sum) and a forward without gradients, interleaved in one process, median of the repeats.

    python scripts/bench_layer.py B T I H [KIND] [--repeats N] [--threads N]

KIND is lstm, peephole, phased or layernorm (default peephole); the input is time-major (T, B, I),
a Phased LSTM gets per-sample timestamps. PHASEDLSTM_SPLIT=units|batch and PHASEDLSTM_AUTOTUNE=0
choose the kernels' split (docs/speed.md). Prints the medians in ms and the ratios to torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import phasedlstm

LAYERS = {"lstm": phasedlstm.LSTM, "peephole": phasedlstm.PeepholeLSTM, "phased": phasedlstm.PhasedLSTM,
          "layernorm": phasedlstm.LayerNormLSTM}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("B", "T", "I", "H"):
        ap.add_argument(name, type=int)
    ap.add_argument("kind", nargs="?", default="peephole", choices=sorted(LAYERS))
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    layer, ref = LAYERS[a.kind](a.I, a.H), torch.nn.LSTM(a.I, a.H)
    x = torch.randn(a.T, a.B, a.I, requires_grad=True)
    kw = {"times": torch.rand(a.B, a.T, dtype=torch.float64).cumsum(1)} if a.kind == "phased" else {}

    def train(m, **k):
        m(x, **k)[0].sum().backward()

    def infer(m, **k):
        with torch.no_grad():
            m(x, **k)

    calls = {"ours train": lambda: train(layer, **kw), "torch train": lambda: train(ref),
             "ours infer": lambda: infer(layer, **kw), "torch infer": lambda: infer(ref)}
    for fn in calls.values():  # warm-up (and the autotuner's first measurement)
        for _ in range(3):
            fn()
    spent = {k: [] for k in calls}
    for _ in range(a.repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            spent[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in spent.items()}
    print(f"{a.kind} (B, T, I, H) = ({a.B}, {a.T}, {a.I}, {a.H}), {a.threads} threads, median of {a.repeats}: "
          f"training {ms['ours train']:.3f} ms, torch.nn.LSTM {ms['torch train']:.3f} ms "
          f"({ms['ours train'] / ms['torch train']:.2f}x); forward without gradients {ms['ours infer']:.3f} ms, "
          f"torch.nn.LSTM {ms['torch infer']:.3f} ms ({ms['ours infer'] / ms['torch infer']:.2f}x)")


if __name__ == "__main__":
    main()
