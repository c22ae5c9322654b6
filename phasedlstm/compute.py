"""``phasedlstm compute RUN...``: what trained models cost at inference, measured.

For each run (its best.pt): the test metric at the epoch chosen on validation; the updates per unit
per test sequence (the valid steps at which a unit is computed: for a Phased LSTM the steps at
which its time gate is open, for the other layers every step) and, for a Phased LSTM, their
fraction of all unit-steps; and the wall-clock time per test sequence of the whole model at
evaluation, dense (every unit computed, ``sparse_inference = False``) and, for a Phased LSTM,
sparse (only the open units), at B = 32 over the whole test split and at B = 1 over its first
``--sequences`` sequences (one call per sequence), median of ``--repeats``. A table, JSON
(``--json``) and the accuracy-against-time plot of the runs (``--plot``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch


def measure(run_dir, repeats: int = 3, single: int = 300) -> dict:
    from phasedlstm.train import load_run_model

    cfg, task, model, ck = load_run_model(run_dir)  # best.pt: the epoch chosen on validation
    return measure_model(model, task, ck, run_dir, repeats, single)


def measure_model(model, task, ck, run_dir, repeats: int = 3, single: int = 300) -> dict:
    """:func:`measure` of a model already loaded from its run's checkpoint ``ck``."""
    from phasedlstm.layers import PhasedLSTM

    cfg = ck["config"]
    model.eval()
    rnn = model.rnn
    gated = isinstance(rnn, PhasedLSTM)
    row = next((r for r in ck["history"] if r["epoch"] == ck["epoch"]), ck["history"][-1])
    test = task.test
    sets = {"B=32": list(test.batches(32)), "B=1": [test[torch.tensor([i])] for i in range(min(single, len(test)))]}
    out = {"run": str(run_dir), "task": cfg["task"], "hidden_size": cfg["hidden_size"],
           "test_metric": row.get("test_acc") if row.get("test_acc") is not None else row.get("test_loss"),
           "epoch": int(row["epoch"]), "sequences": len(test)}
    opened = valid = 0
    for name, batches in sets.items():
        per_seq = sum(len(b.y) for b in batches)
        for sparse in (False, True) if gated else (False,):
            if gated:
                rnn.sparse_inference = sparse
            times = []
            with torch.no_grad():
                for _ in range(repeats + 1):  # (the first: warm-up)
                    t0 = time.perf_counter()
                    for x, t, n, _ in batches:
                        model(x, t, n)
                        if sparse and name == "B=32" and not times:
                            units = int(n.sum()) * rnn.hidden_size * rnn.num_layers
                            opened += rnn.last_open_fraction * units
                            valid += units
                    times.append(time.perf_counter() - t0)
            out[f"{name} {'sparse' if sparse else 'dense'} ms/seq"] = 1000 * statistics.median(times[1:]) / per_seq
    out["threads"] = torch.get_num_threads()
    out["model"] = cfg["model"]
    steps = float(test.lengths.double().mean())
    if not gated:
        out["open_fraction"], out["updates_per_unit"] = None, steps
        return out
    rnn.sparse_inference = True
    out["open_fraction"] = opened / valid if valid else None
    out["updates_per_unit"] = steps * out["open_fraction"] if valid else None
    out["r_on_median"] = float(rnn.open_ratios().detach().median())
    for b in ("B=32", "B=1"):
        out[f"{b} speed-up"] = out[f"{b} dense ms/seq"] / out[f"{b} sparse ms/seq"]
    return out


def format_rows(rows) -> str:
    lines = ["| run | model | test | updates per unit per sequence | open | B=32 dense / sparse ms per seq | x "
             "| B=1 dense / sparse ms per seq | x |", "|---|---|---|---|---|---|---|---|---|"]

    def pair(r, b):
        if r.get(f"{b} sparse ms/seq") is None:
            return f"{r[f'{b} dense ms/seq']:.3f} / - | - "
        return (f"{r[f'{b} dense ms/seq']:.3f} / {r[f'{b} sparse ms/seq']:.3f} | "
                f"{r[f'{b} speed-up']:.1f} ")

    for r in rows:
        opened = "-" if r.get("open_fraction") is None else f"{100 * r['open_fraction']:.1f}%"
        updates = "-" if r.get("updates_per_unit") is None else f"{r['updates_per_unit']:.1f}"
        lines.append(f"| {r['run']} | {r.get('model', 'phased')} | {100 * r['test_metric']:.2f}% | {updates} | "
                     f"{opened} | {pair(r, 'B=32')}| {pair(r, 'B=1')}|")
    return "\n".join(lines)


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ms = r.get("B=32 sparse ms/seq") or r["B=32 dense ms/seq"]  # (the faster path of each model)
        ax.scatter(ms, 100 * r["test_metric"], s=30)
        label = "/".join(Path(r["run"]).parts[-2:])  # (the comparison's folder and the run)
        ax.annotate(label, (ms, 100 * r["test_metric"]), fontsize=6)
    ax.set(xlabel="inference, ms per test sequence (B = 32; sparse for a Phased LSTM)", ylabel="test accuracy (%)",
           title="accuracy against inference time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        rows.append(measure(run, args.repeats, args.sequences))
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    if args.plot:
        plot(rows, args.plot)
    return 0
