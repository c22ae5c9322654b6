"""``phasedlstm bench --grid``: every layer against torch.nn.LSTM at shapes drawn from a grid.

The headline table of ``phasedlstm bench`` has nine shapes; users run others. The grid is

    B in {1, 4, 8, 20, 32, 64, 256}, H in {64, 128, 200, 256, 512, 650, 1024}, I in {1, 32, H},
    T in {35, 100, 1000}, 1 or 2 layers, timestamps shared by the batch or per sample,

of which ``--grid-points`` are drawn (seeded by ``--grid-seed``) among those whose forward does at
most ``--grid-max-gflop`` of matrix products (so that a point takes seconds), plus the shapes of
pytorch/examples' word_language_model (2 layers, batch 20, bptt 35, 200 and 650 units) and two
more users reported. At each point every layer and torch.nn.LSTM (same sizes, time-major) are
timed interleaved in one process, a training step (forward and backward) and a forward without
gradients, the median of ``--repeats``; the ratio to torch.nn.LSTM is reported per layer. Output:
a table, the fraction of points at or below 1.0x and the worst ratio per layer, JSON (``--json``)
and a heat map (``--grid-plot``).
"""

from __future__ import annotations

import itertools
import random
import time

import torch

from phasedlstm.bench import LAYERS, _Case, _make, _median_ms, cpu_model

GRID = {"B": (1, 4, 8, 20, 32, 64, 256), "H": (64, 128, 200, 256, 512, 650, 1024), "I": ("1", "32", "H"),
        "T": (35, 100, 1000), "layers": (1, 2), "times": ("shared", "per-sample")}
#: shapes users reported, always measured: (B, T, I, H, layers)
REPORTED = [(20, 35, 200, 200, 2), (20, 35, 650, 650, 2), (64, 35, 256, 256, 2), (8, 100, 64, 256, 2)]


def forward_gflop(B, T, I, H, layers) -> float:
    return 2.0 * T * B * 4 * H * ((I + H) + (layers - 1) * 2 * H) / 1e9


def grid_points(n: int, seed: int, max_gflop: float) -> list[dict]:
    """``n`` points drawn from the grid (seeded) within the cost bound, then the reported shapes."""
    every = []
    for B, H, I, T, L, tm in itertools.product(*GRID.values()):
        I = H if I == "H" else int(I)
        if forward_gflop(B, T, I, H, L) <= max_gflop:
            every.append({"B": B, "T": T, "I": I, "H": H, "layers": L, "per_sample": tm == "per-sample"})
    picked = random.Random(seed).sample(every, min(n, len(every)))
    picked.sort(key=lambda p: (p["H"], p["B"], p["T"], p["I"], p["layers"], p["per_sample"]))
    reported = [{"B": B, "T": T, "I": I, "H": H, "layers": L, "per_sample": False, "reported": True}
                for B, T, I, H, L in REPORTED]
    return picked + reported


def measure(point: dict, layers=LAYERS, repeats=5, warmup=1) -> dict:
    B, T, I, H, L = point["B"], point["T"], point["I"], point["H"], point["layers"]
    torch.manual_seed(0)
    x = torch.randn(T, B, I, requires_grad=True)
    if point["per_sample"]:
        g = torch.Generator().manual_seed(0)
        times = torch.cumsum(torch.empty(B, T, dtype=torch.float64).exponential_(1.0, generator=g), 1)
    else:
        times = torch.arange(T, dtype=torch.float64)
    cases = [_Case("torch.nn.LSTM", _make("torch", I, H, "auto", num_layers=L), x, times)]
    cases += [_Case(name, _make(name, I, H, "auto", num_layers=L), x, times) for name in layers]
    row = dict(point)
    for mode, fn in (("train", "train_step"), ("infer", "infer")):
        ms = _median_ms(cases, fn, repeats, warmup)
        row[mode] = {"ms": ms, "ratio": {k: v / ms["torch.nn.LSTM"] for k, v in ms.items() if k != "torch.nn.LSTM"}}
    return row


def _label(p) -> str:
    return (f"B={p['B']} T={p['T']} I={p['I']} H={p['H']}" + (f" {p['layers']}L" if p["layers"] > 1 else "")
            + (" ps" if p["per_sample"] else "") + (" *" if p.get("reported") else ""))


def summary(rows, layers) -> dict:
    out = {}
    for mode in ("train", "infer"):
        for name in layers:
            r = [row[mode]["ratio"][name] for row in rows]
            worst = max(range(len(rows)), key=lambda i: r[i])
            out[f"{mode}/{name}"] = {"at_or_below_1": sum(v <= 1.0 for v in r) / len(r),
                                     "above_1_15": sum(v > 1.15 for v in r), "median": sorted(r)[len(r) // 2],
                                     "worst": r[worst], "worst_at": _label(rows[worst])}
    return out


def format_rows(rows, layers) -> str:
    head = f"  {'shape':38s} " + " ".join(f"{n[:9]:>9s}" for n in layers) + "  | " + \
        " ".join(f"{n[:9]:>9s}" for n in layers)
    lines = ["\nratio to torch.nn.LSTM (train | forward without gradients); * = a shape users reported", head]
    for row in rows:
        lines.append(f"  {_label(row):38s} " + " ".join(f"{row['train']['ratio'][n]:9.2f}" for n in layers) + "  | "
                     + " ".join(f"{row['infer']['ratio'][n]:9.2f}" for n in layers))
    return "\n".join(lines)


def format_summary(s) -> str:
    lines = ["\n  layer, mode            points <= 1.0x   points > 1.15x   median   worst (at)"]
    for k, v in s.items():
        lines.append(f"  {k:22s} {100 * v['at_or_below_1']:14.0f}% {v['above_1_15']:16d} {v['median']:8.2f}   "
                     f"{v['worst']:.2f} ({v['worst_at']})")
    return "\n".join(lines)


def heat_map(rows, layers, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.28 * len(rows) + 2), sharey=True)
    for ax, mode in zip(axes, ("train", "infer")):
        m = np.array([[row[mode]["ratio"][n] for n in layers] for row in rows])
        im = ax.imshow(np.log2(m), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_title({"train": "training step", "infer": "forward without gradients"}[mode] + ": x torch.nn.LSTM")
    axes[0].set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
    fig.colorbar(im, ax=axes, label="log2 ratio (blue: faster than torch.nn.LSTM)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_grid(n=36, seed=0, max_gflop=2.0, layers=LAYERS, threads=2, repeats=5, warmup=1, log=print) -> dict:
    torch.set_num_threads(threads)
    points = grid_points(n, seed, max_gflop)
    log(f"{len(points)} points ({n} drawn with seed {seed} among shapes of at most {max_gflop:g} GFLOP per forward, "
        f"and {len(REPORTED)} reported), {threads} threads, median of {repeats}")
    rows, t0 = [], time.perf_counter()
    for i, p in enumerate(points, 1):
        rows.append(measure(p, layers, repeats, warmup))
        log(f"[{i}/{len(points)}] {_label(p)}: train " + " ".join(f"{n} {rows[-1]['train']['ratio'][n]:.2f}"
                                                                   for n in layers)
            + " | infer " + " ".join(f"{n} {rows[-1]['infer']['ratio'][n]:.2f}" for n in layers)
            + f"   ({time.perf_counter() - t0:.0f} s)")
    s = summary(rows, layers)
    log(format_rows(rows, layers))
    log(format_summary(s))
    return {"config": {"torch": torch.__version__, "threads": threads, "cpu": cpu_model(), "repeats": repeats,
                       "points": n, "seed": seed, "max_gflop": max_gflop, "date": time.strftime("%Y-%m-%d")},
            "rows": rows, "summary": s}

