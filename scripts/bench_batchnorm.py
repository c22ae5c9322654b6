"""The BN-LSTM's fused loop against its reference loop and against the fused LSTM: a training step
(forward and backward of a loss on the last step's output) and a forward at evaluation, one
process, interleaved, median of the repeats.

    python scripts/bench_batchnorm.py [--shapes 32,1250,64,110;100,784,1,100] [--repeats 5] [--threads 1]

Shapes are (B, T, I, H), time-major; the defaults are the high-resolution frequency task's longest
batch (110 units after the 64-feature input projection) and sequential MNIST by pixels with the
anchors' 100 units. Prints, per shape, each layer's median ms and its ratio to the fused LSTM.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from phasedlstm import LSTM, BatchNormLSTM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="32,1250,64,110;100,784,1,100")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{a.threads} thread(s), median of {a.repeats}; ms, and the ratio to the fused LSTM's")
    for shape in a.shapes.split(";"):
        B, T, I, H = (int(v) for v in shape.split(","))
        torch.manual_seed(0)
        x = torch.randn(T, B, I)
        layers = {"LSTM (fused)": LSTM(I, H), "BN-LSTM fused": BatchNormLSTM(I, H),
                  "BN-LSTM reference": BatchNormLSTM(I, H, impl="reference")}
        ms = {name: {"train": [], "eval": []} for name in layers}
        for r in range(a.repeats + 1):  # (the first round warms up)
            for name, layer in layers.items():
                layer.train()
                t0 = time.perf_counter()
                out, _ = layer(x)
                out[-1].sum().backward()
                t1 = time.perf_counter()
                layer.eval()
                with torch.no_grad():
                    layer(x)
                t2 = time.perf_counter()
                if r:
                    ms[name]["train"].append((t1 - t0) * 1e3)
                    ms[name]["eval"].append((t2 - t1) * 1e3)
        med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in ms.items()}
        base = med["LSTM (fused)"]
        print(f"\n(B, T, I, H) = ({B}, {T}, {I}, {H})")
        print(f"  {'layer':20s} {'train ms':>10s} {'x LSTM':>7s} {'eval ms':>10s} {'x LSTM':>7s}")
        for name, m in med.items():
            print(f"  {name:20s} {m['train']:10.1f} {m['train'] / base['train']:7.2f} {m['eval']:10.1f} "
                  f"{m['eval'] / base['eval']:7.2f}")


if __name__ == "__main__":
    main()
