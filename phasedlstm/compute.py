"""``phasedlstm compute RUN...``: what trained Phased LSTMs cost at inference, measured.

For each run (its best.pt): the test metric at the epoch chosen on validation, the fraction of
test unit-steps with an open time gate, and the wall-clock time per test sequence of the whole
model at evaluation, dense (every unit computed, ``sparse_inference = False``) and sparse (only the
open units), at B = 32 over the whole test split and at B = 1 over its first ``--sequences``
sequences (one call per sequence), median of ``--repeats``. A table, JSON (``--json``) and the
accuracy-against-time plot of the runs (``--plot``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch


def measure(run_dir, repeats: int = 3, single: int = 300) -> dict:
    from phasedlstm.layers import PhasedLSTM
    from phasedlstm.train import load_run_model

    cfg, task, model, ck = load_run_model(run_dir)  # best.pt: the epoch chosen on validation
    if not isinstance(model.rnn, PhasedLSTM):
        raise SystemExit(f"error: {run_dir} is a {cfg.model} run; compute measures Phased LSTMs (sparse inference)")
    return measure_model(model, task, ck, run_dir, repeats, single)


def measure_model(model, task, ck, run_dir, repeats: int = 3, single: int = 300) -> dict:
    """:func:`measure` of a model already loaded from its run's checkpoint ``ck``."""
    cfg = ck["config"]
    model.eval()
    rnn = model.rnn
    row = next((r for r in ck["history"] if r["epoch"] == ck["epoch"]), ck["history"][-1])
    test = task.test
    sets = {"B=32": list(test.batches(32)), "B=1": [test[torch.tensor([i])] for i in range(min(single, len(test)))]}
    out = {"run": str(run_dir), "task": cfg["task"], "hidden_size": cfg["hidden_size"],
           "test_metric": row.get("test_acc") if row.get("test_acc") is not None else row.get("test_loss"),
           "epoch": int(row["epoch"]), "sequences": len(test)}
    opened = valid = 0
    for name, batches in sets.items():
        per_seq = sum(len(b.y) for b in batches)
        for sparse in (False, True):
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
    rnn.sparse_inference = True
    out["threads"] = torch.get_num_threads()
    out["open_fraction"] = opened / valid if valid else None
    out["r_on_median"] = float(rnn.open_ratios().detach().median())
    for b in ("B=32", "B=1"):
        out[f"{b} speed-up"] = out[f"{b} dense ms/seq"] / out[f"{b} sparse ms/seq"]
    return out


def format_rows(rows) -> str:
    lines = ["| run | test | open | r_on median | B=32 dense / sparse ms per seq | x | B=1 dense / sparse ms per seq | x |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {100 * r['test_metric']:.2f}% | {100 * r['open_fraction']:.1f}% | "
                     f"{r['r_on_median']:.3f} | {r['B=32 dense ms/seq']:.3f} / {r['B=32 sparse ms/seq']:.3f} | "
                     f"{r['B=32 speed-up']:.1f} | {r['B=1 dense ms/seq']:.3f} / {r['B=1 sparse ms/seq']:.3f} | "
                     f"{r['B=1 speed-up']:.1f} |")
    return "\n".join(lines)


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ax.scatter(r["B=32 sparse ms/seq"], 100 * r["test_metric"], s=30)
        label = "/".join(Path(r["run"]).parts[-2:])  # (the comparison's folder and the run)
        ax.annotate(label, (r["B=32 sparse ms/seq"], 100 * r["test_metric"]), fontsize=6)
    ax.set(xlabel="sparse inference, ms per test sequence (B = 32)", ylabel="test accuracy (%)",
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
