"""One layer against torch.nn.LSTM at one shape: a training step (forward and backward) and a forward
without gradients, interleaved in one process, median of the repeats: one point of `phasedlstm
bench --grid`'s measurement (phasedlstm/bench_grid.py).

    python scripts/bench_layer.py B T I H [KIND] [--repeats N] [--threads N]

KIND is lstm, peephole, phased or layernorm (default peephole); the input is time-major (T, B, I),
a Phased LSTM gets per-sample timestamps. PHASEDLSTM_SPLIT=units|batch and PHASEDLSTM_AUTOTUNE=0
choose the kernels' split (docs/speed.md). Prints the medians in ms and the ratios to torch.
"""

from __future__ import annotations

import argparse

import torch

from phasedlstm.bench import LAYERS
from phasedlstm.bench_grid import measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("B", "T", "I", "H"):
        ap.add_argument(name, type=int)
    ap.add_argument("kind", nargs="?", default="peephole", choices=LAYERS)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # (warm-up calls first: the autotuner measures at a shape's first call)
    row = measure({"B": a.B, "T": a.T, "I": a.I, "H": a.H, "layers": 1, "per_sample": True}, layers=[a.kind],
                  repeats=a.repeats, warmup=3)
    tr, inf = row["train"]["ms"], row["infer"]["ms"]
    print(f"{a.kind} (B, T, I, H) = ({a.B}, {a.T}, {a.I}, {a.H}), {a.threads} threads, median of {a.repeats}: "
          f"training {tr[a.kind]:.3f} ms, torch.nn.LSTM {tr['torch.nn.LSTM']:.3f} ms "
          f"({row['train']['ratio'][a.kind]:.2f}x); forward without gradients {inf[a.kind]:.3f} ms, "
          f"torch.nn.LSTM {inf['torch.nn.LSTM']:.3f} ms ({row['infer']['ratio'][a.kind]:.2f}x)")


if __name__ == "__main__":
    main()
