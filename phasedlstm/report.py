"""Tables and plots from run folders (config.json + metrics.csv, and last.pt for the gate plots).

A report written to another folder (``--out``) keeps a copy of each run's config.json and
metrics.csv there, one folder per run, so ``phasedlstm report OUT`` draws the same tables again from
that folder alone (a results folder committed without checkpoints). :func:`update_tables` fills the
tables of a Markdown file (RESULTS.md) from the ``summary.csv`` files it names.

- ``summary.md`` / ``summary.csv``: per model, the test metric of the epoch chosen on
  validation (what best.pt holds; mean ± s.d. over seeds) and the training time per epoch;
- ``curves.png``: learning curves of all models on one figure (mean over seeds, band = s.d.);
- ``final.png``: final-metric bars with the spread over seeds;
- ``gates-<run>.png``: for a Phased LSTM, a raster of time-gate openness k_t (units x time)
  over one test sequence, and the distribution of learned periods against their initial range.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from phasedlstm._files import atomic_write_bytes  # noqa: E402

MODEL_ORDER = ["lstm", "torch-lstm", "peephole", "layernorm", "batchnorm", "phased"]


def read_run(run_dir) -> dict:
    run_dir = Path(run_dir)
    cfg_path, metrics_path = run_dir / "config.json", run_dir / "metrics.csv"
    if not cfg_path.is_file() or not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (it needs config.json and metrics.csv)")
    cfg = json.loads(cfg_path.read_text())
    with open(metrics_path, newline="") as f:
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(f)]
    return {"dir": run_dir, "config": cfg, "history": rows}


def find_runs(paths) -> list[dict]:
    """Run folders among ``paths`` and their direct sub-folders."""
    runs = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            runs.append(read_run(p))
        elif p.is_dir():
            runs.extend(read_run(q) for q in sorted(p.iterdir()) if (q / "metrics.csv").is_file())
        else:
            raise FileNotFoundError(f"{p}: no such folder")
    runs = [r for r in runs if r["history"]]
    if not runs:
        raise FileNotFoundError(f"no run folders with finished epochs in {', '.join(map(str, paths))}")
    return runs


def _metric(run) -> tuple[str, str]:
    """(column, label) of the headline metric: test accuracy, or test loss (MSE) for regression."""
    if run["config"]["task"] == "adding":
        return "test_loss", "test MSE"
    return "test_acc", "test accuracy"


def chosen_row(run) -> dict:
    """The epoch chosen on validation (what best.pt holds), by the run's selection rule
    (``train.SELECTIONS``; a config.json saved before the rule existed took the first of tied
    validation accuracies); the last epoch without validation."""
    from phasedlstm.train import ADDED_LATER, selection_key

    rows = run["history"]
    rule = run["config"].get("selection", ADDED_LATER["selection"])
    has_val = (all(r.get("val_acc") is not None for r in rows)
               or all(r.get("val_loss") is not None and not math.isnan(r["val_loss"]) for r in rows))
    if not has_val:
        return rows[-1]
    return max(rows, key=lambda r: (selection_key(r, rule), -r["epoch"]))


def _sd(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _grouped(runs) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["config"]["model"], []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (MODEL_ORDER.index(kv[0]) if kv[0] in MODEL_ORDER else 99)))


def settings(cfg: dict) -> str:
    """The settings that tell runs apart, for titles: hidden size, layers, pooling, task options."""
    parts = [f"H={cfg.get('hidden_size')}"]
    if cfg.get("layers", 1) != 1:
        parts.append(f"{cfg['layers']} layers")
    parts.append(f"pooling {cfg.get('pooling', 'last')}")
    for k, v in sorted(cfg.get("task_options", {}).items()):
        if k in ("train_file", "test_file", "file"):
            parts.append(f"{k}={Path(v).name}")
        elif k not in ("data_dir", "data_path", "sha256"):
            parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
    return ", ".join(parts)


def summarise(runs) -> list[dict]:
    """Per model: the test metric of the epoch chosen on validation (mean, s.d. over seeds), the
    same at the last epoch (the paper's protocol: no selection), the epochs trained, and the median
    seconds per epoch."""
    rows = []
    for model, rs in _grouped(runs).items():
        col, label = _metric(rs[0])
        picked = [chosen_row(r) for r in rs]
        finals = [p[col] for p in picked if p.get(col) is not None]
        lasts = [r["history"][-1][col] for r in rs if r["history"][-1].get(col) is not None]
        secs = [statistics.median(h["seconds"] for h in r["history"]) for r in rs]
        scale = 100.0 if col == "test_acc" else 1.0
        rows.append({"model": model, "task": rs[0]["config"]["task"], "metric": label, "seeds": len(finals),
                     "epochs": int(statistics.median(r["history"][-1]["epoch"] for r in rs)),
                     "unfinished": sum(1 for r in rs if r["history"][-1]["epoch"] < r["config"].get("epochs", 0)),
                     "planned_epochs": max(int(r["config"].get("epochs", 0)) for r in rs),
                     "chosen_epochs": ",".join(str(int(p["epoch"])) for p in picked),
                     "mean": scale * statistics.mean(finals) if finals else float("nan"),
                     "sd": scale * _sd(finals) if finals else float("nan"),
                     "seconds_per_epoch": statistics.median(secs),
                     "last_seeds": len(lasts),
                     "last_mean": scale * statistics.mean(lasts) if lasts else float("nan"),
                     "last_sd": scale * _sd(lasts) if lasts else float("nan")})
    return rows


def _spread(r, unit="") -> str:
    # accuracies in % to 2 decimals; losses (the adding problem's MSE, trivial 0.167, solved
    # below 0.01) to 4, where 2 would print a solved 0.0037 as 0.00
    d = 2 if unit == "%" else 4
    if r["seeds"] == 1:
        return f"{r['mean']:.{d}f}{unit} (1 seed)"
    return f"{r['mean']:.{d}f}{unit} ± {r['sd']:.{d}f}"


_TABLE = re.compile(r"(<!-- table: (?P<folders>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def read_summary(folder) -> list[dict]:
    """The rows of a report's summary.csv, with numbers as numbers."""
    with open(Path(folder) / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seeds"], r["epochs"] = int(r["seeds"]), int(r["epochs"])
        r["unfinished"] = int(r.get("unfinished") or 0)
        r["planned_epochs"] = int(r.get("planned_epochs") or r["epochs"])
        r["mean"], r["sd"], r["seconds_per_epoch"] = float(r["mean"]), float(r["sd"]), float(r["seconds_per_epoch"])
        # (summaries written before the last-epoch columns existed have none)
        r["last_seeds"] = int(r.get("last_seeds") or 0)
        r["last_mean"], r["last_sd"] = float(r.get("last_mean") or "nan"), float(r.get("last_sd") or "nan")
    return rows


def update_tables(markdown: str, root=".") -> str:
    """Every block ``<!-- table: FOLDER [FOLDER ...] -->`` ... ``<!-- end table -->`` of ``markdown``
    redrawn from those folders' summary.csv (paths relative to ``root``), one table per block."""
    def table(m):
        names = m["folders"].split()
        if all(n.endswith(".json") for n in names):  # `phasedlstm baseline --json` files
            return m.group(1) + format_baseline_table([Path(root) / n for n in names]) + "\n" + m.group(4)
        rows = [{**r, "folder": Path(folder).name} if len(names) > 1 else r
                for folder in names for r in read_summary(Path(root) / folder)]
        return m.group(1) + format_table(rows) + "\n" + m.group(4)

    return _TABLE.sub(table, markdown)


def format_baseline_table(paths) -> str:
    """One row per file of `phasedlstm baseline --json`: test accuracy over its seeds and the
    classifier validation chose for each seed."""
    lines = ["| baseline file | task | seeds | test accuracy (mean ± s.d.) | chosen per seed |", "|---|---|---|---|---|"]
    for p in paths:
        runs = json.loads(Path(p).read_text())
        acc = [100.0 * r["test_accuracy"] for r in runs]
        r0 = runs[0]
        task = r0["task"] + "".join(f", {k} {v}" for k, v in sorted(r0.get("task_options", {}).items()))
        lines.append(f"| {Path(p).name} | {task} | {len(acc)} | "
                     f"{_spread({'seeds': len(acc), 'mean': statistics.mean(acc), 'sd': _sd(acc)}, '%')} | "
                     f"{', '.join(r['chosen'] for r in runs)} |")
    return "\n".join(lines)


def _seconds(v: float) -> str:
    return f"{v:.1f}" if v >= 0.1 else f"{v:.2f}"


def format_table(rows) -> str:
    """The summary rows as a Markdown table; with a column of the test metric at the last epoch
    (the authors' protocol) where any row has it."""
    unit = "%" if rows and rows[0]["metric"] == "test accuracy" else ""
    last = any(r.get("last_seeds") for r in rows)
    folder = any("folder" in r for r in rows)  # (a table of several folders names each row's)
    metric = rows[0]["metric"]
    head = (("| folder " if folder else "") + f"| model | task | seeds | epochs | {metric} at the epoch chosen on "
            "validation (mean ± s.d.) | chosen epochs | " + (f"{metric} at the last epoch | " if last else "")
            + "s / epoch |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        epochs = str(r["epochs"])
        if r.get("unfinished"):  # a table drawn while runs are still training says so
            epochs += f" ({r['unfinished']} unfinished, of {r['planned_epochs']})"
        at_last = ""
        if last:
            at_last = (_spread({"seeds": r["last_seeds"], "mean": r["last_mean"], "sd": r["last_sd"]}, unit)
                       if r.get("last_seeds") else "-") + " | "
        lines.append((f"| {r.get('folder', '')} " if folder else "")
                     + f"| {r['model']} | {r['task']} | {r['seeds']} | {epochs} | {_spread(r, unit)} | "
                     f"{r['chosen_epochs']} | {at_last}{_seconds(r['seconds_per_epoch'])} |")
    return "\n".join(lines)


def plot_curves(runs, path: Path) -> None:
    col, label = _metric(runs[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, rs in _grouped(runs).items():
        for ax, key in ((axes[0], "train_loss"), (axes[1], col)):
            n = max(len(r["history"]) for r in rs)
            scale = 100.0 if key.endswith("acc") else 1.0
            points = []  # (epoch, values of the seeds that have it): the test split may skip epochs
            for i in range(n):
                v = [scale * r["history"][i][key] for r in rs if i < len(r["history"]) and r["history"][i][key] is not None]
                if v:
                    points.append((i + 1, v))
            if not points:
                continue
            epochs = [e for e, _ in points]
            mean = [statistics.mean(v) for _, v in points]
            sd = [_sd(v) for _, v in points]
            seeds = max(len(v) for _, v in points)
            ax.plot(epochs, mean, marker="o" if len(points) <= 30 else None, markersize=3,
                    label=f"{model} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(epochs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel=label + (" (%)" if col == "test_acc" else ""), title=label)
    if col == "test_loss" and runs[0]["config"]["task"] == "adding":
        axes[1].axhline(2 / 12, color="grey", ls="--", label="trivial baseline 0.167")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{runs[0]['config']['task']} ({settings(runs[0]['config'])})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_final(rows, path: Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    sd = [0.0 if math.isnan(r["sd"]) else r["sd"] for r in rows]
    ax.bar([r["model"] for r in rows], [r["mean"] for r in rows], yerr=sd, capsize=6, color="#4c72b0")
    unit = " (%)" if rows[0]["metric"] == "test accuracy" else ""
    for i, r in enumerate(rows):  # the label above the error bar, not on it
        ax.text(i, r["mean"] + sd[i], _spread(r) + "\n", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=rows[0]["metric"] + unit + ", epoch chosen on validation",
           title=f"{rows[0]['task']}: mean ± s.d. over seeds" + (f"\n{title}" if title else ""))
    top = max(r["mean"] + s for r, s in zip(rows, sd))
    ax.set_ylim(0, 112 if unit else top * 1.25)  # from zero: a cut axis would exaggerate the gaps
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gates(run: dict, path: Path) -> bool:
    """Gate raster and period distribution of a Phased LSTM run; False if the run has none."""
    from phasedlstm.layers import PhasedLSTM
    from phasedlstm.train import load_run_model

    if run["config"]["model"] != "phased":
        return False
    cfg, task, model, _ = load_run_model(run["dir"] / "last.pt")
    if not isinstance(model.rnn, PhasedLSTM):
        return False
    rnn = model.rnn.eval()
    b = task.test[torch.tensor([0])]
    n = int(b.lengths[0])
    scale = getattr(model, "time_scale", 1.0)  # the layer's time unit, in the data's (see --period-init auto)
    with torch.no_grad():
        k = rnn.time_gates(b.times[0, :n] / scale)  # (T, H)
        period = rnn.period_l0.detach().abs() * scale
        order = torch.argsort(period)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    t = b.times[0, :n].numpy()
    im = axes[0].imshow(k[:, order].T.numpy(), aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                        extent=[t[0], t[-1], 0, k.shape[1]], interpolation="nearest")
    axes[0].set(xlabel=f"time ({task.time_unit})", ylabel="unit (sorted by period)",
                title=f"time-gate openness k_t over test sequence 0 ({n} samples)")
    fig.colorbar(im, ax=axes[0], label="k_t")
    lo, hi = (math.exp(v) * scale for v in rnn.period_init)
    bins = torch.logspace(math.log10(max(period.min().item(), 1e-3)), math.log10(period.max().item() + 1e-9), 25)
    axes[1].hist(period.numpy(), bins=bins.numpy(), color="#4c72b0")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].axvspan(lo, hi, color="grey", alpha=0.2, label=f"initial range {lo:.3g} to {hi:.3g} (log-uniform)")
    axes[1].set(xlabel=f"learned period tau ({task.time_unit})", ylabel="units", title="learned periods")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(paths, out_dir=None, log=print, gates: bool = True) -> dict:
    """Tables and plots for the runs in ``paths``; written to ``out_dir`` (default: the first path)."""
    runs = find_runs(paths)
    tasks = sorted({r["config"]["task"] for r in runs})
    if len(tasks) > 1:
        raise ValueError(f"the runs are of several tasks ({', '.join(tasks)}); report one task at a time")
    out = Path(out_dir or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs)
    table = format_table(rows)
    (out / "summary.md").write_text(table + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in runs:  # the runs' own records beside the report, so that it can be drawn again from `out` alone
        keep = out / r["dir"].name
        if keep.resolve() != r["dir"].resolve():
            keep.mkdir(exist_ok=True)
            for name in ("config.json", "metrics.csv", "inference.json"):  # (the last: a Phased LSTM's timing)
                if (r["dir"] / name).exists():
                    atomic_write_bytes(keep / name, (r["dir"] / name).read_bytes())
    plot_curves(runs, out / "curves.png")
    plot_final(rows, out / "final.png", settings(runs[0]["config"]))
    written = [out / "summary.md", out / "summary.csv", out / "curves.png", out / "final.png"]
    if gates:  # one raster per Phased LSTM configuration: its first run
        for r in _grouped(runs).get("phased", [])[:1]:
            p = out / f"gates-{r['dir'].name}.png"
            if (r["dir"] / "last.pt").exists() and plot_gates(r, p):
                written.append(p)
    log(table)
    log("written: " + ", ".join(str(p) for p in written))
    return {"rows": rows, "table": table, "files": written}
