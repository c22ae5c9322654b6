"""Where a trained model of a single-frequency task errs: its test errors by the period's distance
to the class boundaries (5 and 6 ms) and by the sequence's duration.

    python scripts/freq_errors.py results/models/freq-async-phased-seed0 [RUN ...] [--threads 1]

The test set is regenerated from the run's configuration (the same stream as ``phasedlstm
evaluate``), together with the periods the generator drew, which the dataset does not keep.
The accuracy printed first equals ``phasedlstm evaluate RUN --split test``.

For the standard condition it also counts the sequences no model can classify: sampled every
1 ms, sin(2 pi t / p - s) at t = t0 + k equals -sin(2 pi t / p' + s') with 1 / p' = 1 - 1 / p, so a
period p in [1.2, 1.25] ms (not special) gives the same samples as p' = p / (p - 1) in [5, 6] ms
(special), with another uniformly drawn shift. The special class is far likelier for such a
sequence, so the best possible classifier calls them all special: the error floor is the share
of such periods, 0.5 * ln(1.25 / 1.2) / ln(100) = 0.44% in expectation.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from phasedlstm.data import frequency
from phasedlstm.train import load_run_model

# distance of the period to the nearer boundary, relative to it: |p - 5| / 5 or |p - 6| / 6
DIST_BINS = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.2, np.inf]
DUR_BINS = [15, 30, 60, 90, 125]


def test_periods(cfg, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(periods, durations, labels) of the run's test set, drawn as frequency_task draws it."""
    condition = cfg.task.removeprefix("freq-")
    _, times, lengths, y, _, period = frequency._generate(condition, max(n_test, 1), frequency.stream(cfg.seed, "test"))
    last = times[np.arange(len(lengths)), lengths - 1]
    return period, last - times[:, 0], y


def predictions(model, ds, batch_size=500) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            b = ds[torch.arange(i, min(i + batch_size, len(ds)))]
            x, t, n, _ = b
            out.append(model(x, t, n).argmax(1).numpy())
    return np.concatenate(out)


def table(name, values, bins, wrong, fmt):
    print(f"\n  {name:<28} {'sequences':>10} {'errors':>7} {'error rate':>11} {'share of errors':>16}")
    idx = np.digitize(values, bins) - 1
    for k in range(len(bins) - 1):
        m = idx == k
        if not m.any():
            continue
        e = int(wrong[m].sum())
        print(f"  {fmt(bins[k], bins[k + 1]):<28} {int(m.sum()):>10} {e:>7} {e / m.sum():>10.2%} "
              f"{e / max(wrong.sum(), 1):>15.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (config.json + best.pt) of freq-standard/-highres/-async")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.runs:
        cfg, task, model, ck = load_run_model(path)
        if cfg.task not in ("freq-standard", "freq-highres", "freq-async"):
            raise SystemExit(f"{path}: task {cfg.task}; this script reads the single-frequency tasks only")
        ds = task.test
        period, duration, y = test_periods(cfg, len(ds))
        if not np.array_equal(y, ds.y.numpy()):
            raise SystemExit(f"{path}: the regenerated labels differ from the task's test set")
        wrong = predictions(model, ds) != y
        dist = np.minimum(np.abs(period - 5.0) / 5.0, np.abs(period - 6.0) / 6.0)
        print(f"{path}: {cfg.task}, {cfg.model}, seed {cfg.seed}, epoch {ck.get('epoch')}: "
              f"test accuracy {1 - wrong.mean():.4f} on {len(y)} sequences ({int(wrong.sum())} errors; "
              f"{int(wrong[y == 1].sum())} special sequences called not special, "
              f"{int(wrong[y == 0].sum())} the other way)")
        if cfg.task == "freq-standard":
            alias = (y == 0) & (period >= 1.2) & (period <= 1.25)
            print(f"  aliased (not special, p in [1.2, 1.25] ms: sampled every 1 ms, identical to a special "
                  f"period): {int(alias.sum())} sequences, {int(wrong[alias].sum())} of them errors; the best "
                  f"possible accuracy on this test set is {1 - alias.mean():.4f}")
        table("period's distance to 5 / 6 ms", dist, DIST_BINS, wrong,
              lambda a, b: f"{a:.1%} - {b:.1%}" if np.isfinite(b) else f">= {a:.0%}")
        table("duration (ms)", duration, DUR_BINS, wrong, lambda a, b: f"{a:g} - {b:g}")
        print()


if __name__ == "__main__":
    main()
