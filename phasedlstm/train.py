"""Training runs that survive: configuration, the loop, checkpoints, resume, evaluation.

A run folder holds

- ``config.json``: the full configuration (everything needed to rebuild task and model);
- ``metrics.csv``: one row per epoch (epoch, train/val/test loss and accuracy, seconds, lr;
  seconds: the epoch's training time, summed across a kill and resume inside it);
- ``last.pt``: the latest state, written at the end of every epoch and every
  ``checkpoint_seconds`` inside an epoch; ``best.pt``: the model with the best validation
  metric so far.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, written to a
temporary file and renamed (never half-written), and are read with
``torch.load(..., weights_only=True)``, so loading one can never run code.

Resuming restores model, optimiser, the shuffling generator (as it was at the start of the
interrupted epoch, so the epoch's batch order is rebuilt exactly), the global torch RNG
(dropout) and the position inside the epoch, so a resumed run reaches the same numbers as
an uninterrupted one with the same seed (on CPU).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from phasedlstm._files import atomic_path, atomic_write_bytes
from phasedlstm.data import Task, get_task, task_options
from phasedlstm.models import SequenceModel

CHECKPOINT_FORMAT = "phasedlstm-checkpoint"
CHECKPOINT_VERSION = 2  # 2: with a SHA-256 of its contents (1: without, still read)
READABLE_VERSIONS = (1, 2)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "seconds", "lr", "open_fraction"]
TIME_GATED = ("phased",)


#: the most units a configuration may ask for (a crafted checkpoint must not make us allocate terabytes)
MAX_UNITS = 65536


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message names the key and why."""


class RunInUse(RuntimeError):
    """Another process is training in this run folder."""


def suggest(name: str, valid) -> str:
    """'; did you mean X?' for the closest valid name, and the list of valid names."""
    import difflib

    close = difflib.get_close_matches(str(name).replace("_", "-"), list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (valid: {', '.join(valid)})"


class RunWriteError(RuntimeError):
    """A run's file could not be written (a full disk, a read-only folder); nothing written before is lost."""


@contextlib.contextmanager
def _writing(path: Path):
    """``atomic_path`` for a run's files, with an OSError (a full disk: errno 28) said in one line:
    the write goes to a temporary file first, so the file it would replace is intact."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        full = e.errno == errno.ENOSPC
        raise RunWriteError(
            f"cannot write {path}: {'the disk is full' if full else (e.strerror or e)}. Nothing is lost: "
            f"{'the previous ' + path.name + ' is as it was' if path.exists() else 'no file was half written'}; "
            f"{'free some space' if full else 'make the folder writable'} and run the same command again "
            f"(`phasedlstm train --resume {path.parent}` for one run): it continues from the last checkpoint") from None


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


SELECTIONS = {
    "accuracy-loss": "the highest validation accuracy, ties broken by the lowest validation loss",
    "accuracy": "the highest validation accuracy, the first of ties",
    "loss": "the lowest validation loss",
}
# Keys whose default changed after runs were saved without them: a config.json that lacks one
# was trained with this value (runs saved before `selection` existed took the first of tied accuracies).
ADDED_LATER = {"selection": "accuracy"}


@dataclass
class TrainConfig:
    """Everything a run needs; saved as config.json. Defaults follow the paper's frequency setup."""

    task: str
    model: str = "phased"
    hidden_size: int = 110
    layers: int = 1
    proj_size: int = 64  # linear projection of the input before the recurrent layer (0: none)
    pooling: str = "last"  # "last" valid step (the paper) or "mean" over valid steps (the lecture)
    dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay: float = 1.0  # the learning rate is multiplied by this every lr_decay_every epochs (1: constant)
    lr_decay_every: int = 10
    clip: float = 10.0  # gradient-norm clipping (0: none)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) when > 0; Adam without
    optimizer: str = "adam"  # OPTIMIZERS: Adam (AdamW with weight_decay) or RMSprop
    noise: float = 0.0  # s.d. of Gaussian noise added to the inputs of training batches (augmentation)
    compute_penalty: float = 0.0  # a Phased LSTM's loss += this x its expected open fraction (mean r_on)
    seed: int = 0
    device: str = "auto"
    time_feature: str = "auto"  # frequency tasks: timestamps as an input feature; auto: for models without a time gate
    task_options: dict = field(default_factory=dict)
    rnn_options: dict = field(default_factory=dict)  # e.g. period_init, r_on for "phased"
    checkpoint_seconds: float = 60.0  # also checkpoint inside an epoch this often
    test_every: int = 1  # evaluate the test split every k epochs (and at the last, and at each new best)
    selection: str = "accuracy-loss"  # how the epoch of best.pt is chosen on validation: SELECTIONS
    tensorboard: str | None = None  # also write each epoch's metrics here as TensorBoard events

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A configuration saved in a run folder or checkpoint; the keys it lacks take the value
        they had in effect when it was saved (ADDED_LATER), else their defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        cfg = cls(**{**ADDED_LATER, **d})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values that cannot train (or would allocate absurd amounts) with a ConfigError
        naming the key, what it must be and what it is: a config.json or checkpoint may have been
        edited by hand, and the command line checks the same ranges when it parses."""
        from phasedlstm.data import TASKS
        from phasedlstm.models import MODELS, POOLING

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"configuration: {key} must be {what}, got {getattr(self, key)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.task not in TASKS:
            raise ConfigError(f"configuration: unknown task {self.task!r}{suggest(self.task, TASKS)}")
        if self.model not in MODELS:
            raise ConfigError(f"configuration: unknown model {self.model!r}{suggest(self.model, MODELS)}")
        need(is_int(self.hidden_size) and 1 <= self.hidden_size <= MAX_UNITS, "hidden_size",
             f"an integer in [1, {MAX_UNITS}]")
        need(is_int(self.layers) and 1 <= self.layers <= 64, "layers", "an integer in [1, 64]")
        need(is_int(self.proj_size) and 0 <= self.proj_size <= MAX_UNITS, "proj_size",
             f"an integer in [0, {MAX_UNITS}] (0: no projection)")
        need(self.pooling in POOLING, "pooling", f"one of {list(POOLING)}")
        need(is_num(self.dropout) and 0 <= self.dropout < 1, "dropout", "a number in [0, 1)")
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(is_num(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(is_num(self.lr_decay) and 0 < self.lr_decay <= 1, "lr_decay", "a number in (0, 1] (1: constant)")
        need(is_int(self.lr_decay_every) and self.lr_decay_every >= 1, "lr_decay_every", "an integer >= 1")
        need(is_num(self.clip) and self.clip >= 0, "clip", "a finite number >= 0 (0: no clipping)")
        need(is_num(self.weight_decay) and 0 <= self.weight_decay <= 1, "weight_decay", "a number in [0, 1]")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {list(OPTIMIZERS)}")
        if self.weight_decay and self.optimizer != "adam":
            raise ConfigError("configuration: weight_decay (decoupled, AdamW) applies to optimizer adam only")
        need(is_num(self.noise) and 0 <= self.noise <= 100, "noise", "a number in [0, 100]")
        need(is_num(self.compute_penalty) and 0 <= self.compute_penalty <= 1e6, "compute_penalty",
             "a number in [0, 1e6]")
        if self.compute_penalty and self.model != "phased":
            raise ConfigError("configuration: compute_penalty applies to the Phased LSTM (model phased) only")
        need(is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0")
        need(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")
        need(self.time_feature in ("auto", "yes", "no", "t", "dt"), "time_feature", "auto, yes, no, t or dt")
        need(is_num(self.checkpoint_seconds) and self.checkpoint_seconds >= 0, "checkpoint_seconds",
             "a finite number >= 0 (0: after every step)")
        need(is_int(self.test_every) and self.test_every >= 1, "test_every", "an integer >= 1")
        need(self.selection in SELECTIONS, "selection", f"one of {list(SELECTIONS)}")
        need(self.tensorboard is None or isinstance(self.tensorboard, str), "tensorboard", "a folder or None")
        need(isinstance(self.task_options, dict), "task_options", "a dict")
        need(isinstance(self.rnn_options, dict), "rnn_options", "a dict")


# -- building task and model -------------------------------------------------------------------


def resolve_task_options(cfg: TrainConfig) -> dict:
    """The task's options, with the time feature decided for frequency tasks."""
    opts = dict(cfg.task_options)
    kind = task_options(cfg.task).get("time_feature", None)
    if isinstance(kind, bool):  # frequency tasks: yes/no, auto = for models without a time gate
        if cfg.time_feature not in ("auto", "yes", "no"):
            raise ConfigError(f"time_feature of task {cfg.task} must be auto, yes or no, got {cfg.time_feature!r}")
        opts["time_feature"] = (cfg.model not in TIME_GATED) if cfg.time_feature == "auto" else cfg.time_feature == "yes"
    elif isinstance(kind, str):  # watch: none, t or dt (auto, no: none)
        if cfg.time_feature not in ("auto", "no", "t", "dt"):
            raise ConfigError(f"time_feature of task {cfg.task} must be t, dt or no, got {cfg.time_feature!r}")
        opts["time_feature"] = cfg.time_feature if cfg.time_feature in ("t", "dt") else "none"
    elif cfg.time_feature not in ("auto", "no"):
        raise ConfigError(f"task {cfg.task!r} has no time-feature option")
    return opts


def build_task(cfg: TrainConfig) -> Task:
    return get_task(cfg.task, seed=cfg.seed, **resolve_task_options(cfg))


def derived_options(cfg: TrainConfig, task: Task) -> dict:
    """What a run's configuration leaves to the data: with ``period_init`` "auto", the time scale
    and the periods' range measured on the training split (:func:`phasedlstm.timescale.auto_time_init`;
    the same for the same data and seed, so a resumed or reloaded run rebuilds the same model)."""
    if cfg.rnn_options.get("period_init") != "auto":
        return {}
    from phasedlstm.timescale import auto_time_init

    try:
        a = auto_time_init(task.train.times, task.train.lengths)
    except ValueError as e:
        raise ConfigError(f"--period-init auto: {e}; give --period-init A B") from None
    unit = task.time_unit
    return {"time_scale": a["time_scale"], "period_init": list(a["period_init"]),
            **({} if "r_on" in cfg.rnn_options else {"r_on": a["r_on"]}),
            "periods": f"{math.exp(a['period_init'][0]) * a['time_scale']:.4g} to "
                       f"{math.exp(a['period_init'][1]) * a['time_scale']:.4g} {unit}",
            "median_gap": a["median_gap"], "median_duration": a["median_duration"],
            "median_observations": a["median_observations"], "time_unit": unit}


def build_model(cfg: TrainConfig, task: Task, derived: dict | None = None) -> SequenceModel:
    """The run's model; ``derived``: :func:`derived_options` where the caller has them already."""
    output = task.num_classes if task.num_classes else 1
    rnn = dict(cfg.rnn_options)
    derived = derived_options(cfg, task) if derived is None else derived
    if derived:
        rnn["period_init"] = tuple(derived["period_init"])
        rnn["time_scale"] = derived["time_scale"]
        if "r_on" in derived:  # (an r_on the configuration gives is kept)
            rnn["r_on"] = derived["r_on"]
    if cfg.model == "batchnorm":  # statistics for every step of the longest training sequence
        rnn.setdefault("max_length", max(1, int(task.train.lengths.max())))
    return SequenceModel(cfg.model, task.input_size, cfg.hidden_size, output, cfg.layers, cfg.proj_size,
                         cfg.pooling, cfg.dropout, embedding=task.info.get("embedding", 0), **rnn)


#: the optimizers a run can use: Adam (the default), RMSprop (the optimizer of the sequential-MNIST
#: anchors of Cooijmans et al.; here torch.optim.RMSprop with a squared-gradient average of 0.9)
OPTIMIZERS = ("adam", "rmsprop")


def make_optimizer(params, lr: float, weight_decay: float, name: str = "adam") -> torch.optim.Optimizer:
    """Adam, or AdamW (decoupled weight decay) where ``weight_decay`` > 0; or RMSprop."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9)
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr)


def with_input_noise(x: Tensor, lengths: Tensor, sd: float, generator: torch.Generator | None = None,
                     skip: int = 0) -> Tensor:
    """x plus Gaussian noise of s.d. ``sd`` on each sequence's valid steps (augmentation), drawn from
    ``generator`` (torch's default, which checkpoints carry, where None); the first ``skip`` features
    (an embedded index: an event's address) are left as they are."""
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    noise = torch.randn_like(x) if generator is None else torch.randn(x.shape, generator=generator).to(x.device)
    if skip:
        noise[..., :skip] = 0
    return x + sd * noise * valid[..., None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


# -- checkpoints ----------------------------------------------------------------------------------


def _digest(obj, h=None) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; containers in order),
    so that a flipped bit anywhere in the numbers is found when the file is read."""
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"V{obj!r}".encode())
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically (temporary file, then rename), with a checksum of its contents."""
    ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    ck["sha256"] = _digest(ck)
    buf = io.BytesIO()
    torch.save(ck, buf)
    with _writing(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message: a header, then the reason ("Unsupported operand ..." for garbage,
        # "... unsupported GLOBAL posix.system ..." for a pickled object)
        detail = " ".join(line.strip() for line in str(e).splitlines() if "unsupported" in line.lower())
        if "global" in detail.lower():  # a pickled object: loading it could run code
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain containers, "
                                  f"and loading it could run code ({detail})") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = detail or next((line.split("WeightsUnpickler error:", 1)[1].strip() for line in lines
                                 if "WeightsUnpickler error:" in line), "") or (lines[0] if lines else "")
        if "weights_only" in reason or not reason:  # (torch's advice to load it unsafely is not ours to give)
            reason = "its contents are not a valid pickle"
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None
    except Exception as e:  # truncated or corrupt archives raise RuntimeError, KeyError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a phasedlstm checkpoint")
    if ck.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')}, this phasedlstm reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    if ck["version"] >= 2:
        stored = ck.pop("sha256", None)
        if stored != _digest(ck):
            raise CheckpointError(f"{path}: corrupt: its contents do not match the checksum written with them "
                                  f"(a changed byte on disk or in transfer); use another checkpoint")
    try:
        TrainConfig.from_dict(ck["config"])
    except (ConfigError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its configuration cannot be used: {e}") from None
    return ck


def load_run_model(path, device="cpu") -> tuple[TrainConfig, Task, SequenceModel, dict]:
    """(config, task, model with the checkpoint's weights, checkpoint) from a run folder or a .pt file.

    A folder loads its ``best.pt`` (or ``last.pt`` if there is no best yet)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").exists() and not (path / "last.pt").exists() and (path / "config.json").exists():
            raise CheckpointError(f"{path}: this run has not finished an epoch yet (no best.pt or last.pt); "
                                  f"train it (phasedlstm train --resume {path}) before evaluating or exporting it")
        path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
    ck = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ck["config"])
    w = ck["model"].get("rnn.weight_hh_l0") if isinstance(ck.get("model"), dict) else None
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (4 * cfg.hidden_size, cfg.hidden_size):
        raise CheckpointError(f"{path}: its weights (rnn.weight_hh_l0 of shape "
                              f"{None if w is None else tuple(w.shape)}) do not fit its configuration "
                              f"(hidden_size {cfg.hidden_size}); refused before building the model")
    task = build_task(cfg)
    model = build_model(cfg, task)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its configuration builds: {e}") from None
    return cfg, task, model.to(device), ck


# -- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: SequenceModel, dataset, batch_size: int = 256, device="cpu") -> tuple[float, float | None]:
    """(mean loss, accuracy or None for regression) over ``dataset`` in eval mode. A data set of
    windows (``dataset.group``) is scored per recording: the mean of its windows'
    log-probabilities (classes) or predictions (regression) is the recording's output."""
    if len(dataset) == 0:
        return float("nan"), None
    if dataset.group is not None:
        return _evaluate_recordings(model, dataset, batch_size, device)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for b in dataset.batches(batch_size):
        x, t, n_, y = (v.to(device) for v in b)
        out = model(x, t, n_)
        loss_sum += model.loss(out, y).item() * len(y)
        if not y.is_floating_point():
            correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return loss_sum / n, (None if dataset.y.is_floating_point() else correct / n)


def _evaluate_recordings(model, dataset, batch_size, device) -> tuple[float, float | None]:
    from phasedlstm.models import log_softmax

    was_training = model.training
    model.eval()
    outs = [model(*(v.to(device) for v in b[:3])).cpu() for b in dataset.batches(batch_size)]
    model.train(was_training)
    out, y, g = torch.cat(outs), dataset.y, dataset.group
    regression = y.is_floating_point()
    groups, inverse = torch.unique(g, return_inverse=True)
    per = out if regression else log_softmax(out)
    total = torch.zeros(len(groups), per.shape[1], dtype=per.dtype).index_add_(0, inverse, per)
    count = torch.zeros(len(groups), dtype=per.dtype).index_add_(0, inverse, torch.ones(len(g), dtype=per.dtype))
    out = total / count[:, None]
    y = torch.zeros(len(groups), dtype=y.dtype).index_copy_(0, inverse, y)
    loss = float(model.loss(out, y))
    return loss, (None if regression else float((out.argmax(1) == y).double().mean()))


# -- the run ----------------------------------------------------------------------------------------


class _Dist:
    """torchrun's environment: rank, world size, and the process group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_checksum(self, model: nn.Module) -> list[float]:
        local = torch.tensor([sum(float(p.detach().double().sum()) for p in model.parameters())],
                             dtype=torch.float64)
        out = [torch.zeros_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(out, local)
        return [float(v) for v in out]

    def close(self, ok: bool = True):
        if self.active and torch.distributed.is_initialized():
            if ok:  # every rank reaches shutdown before any tears its connections down (gloo aborts otherwise)
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    with _writing(run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def selection_key(row: dict, rule: str, has_val: bool = True) -> tuple:
    """What best.pt maximises (the first epoch of equal keys wins), by the run's ``selection`` rule
    (SELECTIONS): validation accuracy, with minus validation loss breaking ties ("accuracy-loss"),
    alone ("accuracy"), or minus validation loss alone ("loss", and always for regression); minus
    the training loss when there is no validation split."""
    if not has_val:
        return (-row["train_loss"],)
    if rule == "loss" or row.get("val_acc") is None:
        return (-row["val_loss"],)
    if rule == "accuracy":
        return (row["val_acc"],)
    return (row["val_acc"], -row["val_loss"])


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI); the epoch summaries still print
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, disable=None)


class _RunLock:
    """An exclusive lock on a run folder for the life of a run (an flock on ``RUN/.lock``, which the
    kernel releases when the holder dies, so a killed run never leaves a stale lock). A second
    process that tries to train in the same folder gets :class:`RunInUse` naming the holder."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunInUse(f"{self.path.parent} is in use by another process (pid {holder}) training in it; two "
                           f"runs in one folder would mix their files. Wait for it, or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # releases the flock
        return False


def _read_config_json(run_dir: Path) -> dict | None:
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not readable JSON ({e})") from None
    if isinstance(d, dict):
        d.pop("derived", None)  # (what the data decided: written for the reader, rebuilt from the data)
    return d


def train(cfg: TrainConfig | None, run_dir, resume: bool = False, progress: bool = True,
          extra_epochs: int | None = None, epochs: int | None = None, log=print) -> dict:
    """Train (or, with ``resume``, continue) the run in ``run_dir``; returns the last epoch's metrics row.

    On resume, ``extra_epochs`` trains that many epochs beyond the run's configured total, and
    ``epochs`` sets a new total (it must not be below the epochs already trained). A folder that
    holds only config.json (a run stopped before its first checkpoint) resumes from epoch 1; a
    fresh ``train`` into such a folder takes it over. Only one process trains in a folder at a
    time (:class:`RunInUse`).
    """
    run_dir = Path(run_dir)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        _check_run_folder(run_dir, resume)
    lock = _RunLock(run_dir) if main_rank else contextlib.nullcontext()
    with lock:
        return _train_locked(cfg, run_dir, resume, progress, extra_epochs, epochs, log)


#: the files a run folder holds (besides the temporary files of an interrupted write)
_RUN_FILES = {"config.json", "metrics.csv", "last.pt", "best.pt", "inference.json", ".lock"}


def _check_run_folder(run_dir: Path, resume: bool) -> None:
    """A run is written only into a folder of its own: a new one, an empty one, or one a run wrote
    (its config.json is a run configuration). A folder that holds anything else — someone's files,
    another tool's config.json — is refused, never taken over; so is a path below a file."""
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{run_dir}: {parent} is a file, not a folder; choose another --out")
    if resume or not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    others = sorted(n for n in names if n not in _RUN_FILES and not n.endswith(".tmp"))
    present = sorted(names & (_RUN_FILES - {".lock"}))
    saved = None
    if (run_dir / "config.json").is_file():
        try:
            saved = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            saved = None
    ours = isinstance(saved, dict) and {"task", "model", "hidden_size", "epochs", "seed"} <= set(saved)
    if others or (present and not ours):
        what = ", ".join(sorted(others + present)[:6])
        raise ConfigError(f"{run_dir} holds files that are not a phasedlstm run ({what}); a run writes only into "
                          f"a new folder, an empty one or its own. Choose another --out")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: lr * lr_decay ** (epoch // lr_decay_every)."""
    return cfg.lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)


def plain_config(d: dict, defaults: bool = False) -> dict:
    """A configuration as config.json holds it (tuples become lists), for comparisons; with
    ``defaults``, the keys it lacks (added by a later version) at the values they had in effect
    (ADDED_LATER) or their defaults."""
    if defaults:
        from dataclasses import MISSING

        base = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(TrainConfig)
                if f.default is not MISSING or f.default_factory is not MISSING}
        d = {**base, **ADDED_LATER, **d}
    return json.loads(json.dumps(d))


def _kernels_note(model, device) -> str:
    """Which loop the run's recurrent layers take on the CPU, for its log: a run that fell back to
    the reference loop (no compiler, a build that failed or was waited for too long) is several
    times slower, and its log should say so at the start, not only in a warning."""
    from phasedlstm import fast
    from phasedlstm.layers import RecurrentLayer

    layers = [m for m in model.modules() if isinstance(m, RecurrentLayer) and m.impl in ("auto", "fast")]
    if torch.device(device).type != "cpu" or not layers:
        return ""
    if all(m._kernel is None for m in layers):
        return f" (the reference loop: {type(layers[0]).__name__} has no fused kernels)"
    if all(m.proj_size for m in layers):
        return " (the reference loop: the fused kernels have no projections, proj_size > 0)"
    return " (fused kernels)" if fast.load() else f" (the reference loop: fused kernels unavailable, {fast.unavailable_reason()})"


def _train_locked(cfg, run_dir: Path, resume: bool, progress: bool, extra_epochs, epochs, log) -> dict:
    for tmp in run_dir.glob(".*.tmp"):  # half-written files of a killed process (we hold the folder's lock)
        tmp.unlink(missing_ok=True)
    if extra_epochs is not None and (not isinstance(extra_epochs, int) or extra_epochs < 1):
        raise ConfigError(f"extra epochs must be an integer >= 1 (that many epochs are trained beyond the run's "
                          f"total), got {extra_epochs!r}")
    ck = None
    if resume:
        cfg, ck, finished = _reconcile_resume(run_dir, extra_epochs, epochs, log)
        if finished is not None:
            return finished
    elif (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another --out")
    elif (run_dir / "config.json").exists():
        log(f"taking over {run_dir}: it holds a configuration but no checkpoint (a run stopped before its first)")
    cfg.validate()
    run = _Run(cfg, run_dir, progress, log)
    try:
        if ck is not None:
            run.restore(ck)
        run.start()
        for epoch in range(run.start_epoch, cfg.epochs):
            train_seconds = run.train_epoch(epoch)
            run.end_epoch(epoch, train_seconds)
        run.check_replicas()
        if run.dist.main:
            run.time_inference()
    except BaseException:
        run.dist.close(ok=False)  # a failing rank must not wait in a barrier for the others
        raise
    run.dist.close()
    return run.last_row


def _reconcile_resume(run_dir: Path, extra_epochs, epochs, log):
    """The configuration a resumed run continues with (from last.pt, or config.json before the first
    checkpoint), its epochs extended as asked -> (cfg, checkpoint or None, the last row if there is
    nothing to train, else None)."""
    ck = None
    saved = _read_config_json(run_dir)
    if (run_dir / "last.pt").exists():
        ck = load_checkpoint(run_dir / "last.pt")
        cfg = TrainConfig.from_dict(ck["config"])
        if saved is not None:
            # config.json mirrors the checkpoint's configuration; an edit would be silently ignored.
            # Compared as JSON holds them (a tuple in the checkpoint is a list in config.json).
            # A key that the run's version did not have yet counts as its default.
            kept, shown = plain_config(ck["config"], defaults=True), plain_config(saved, defaults=True)
            differ = sorted(k for k in set(shown) | set(kept) if k != "epochs" and shown.get(k) != kept.get(k))
            if differ:
                raise ConfigError(
                    f"{run_dir / 'config.json'} differs from the configuration the run was trained with "
                    f"(in {', '.join(differ)}); a run continues as it was configured. Restore config.json "
                    f"(or delete it: last.pt holds the configuration), or start a new run with --out")
            if isinstance(saved.get("epochs"), int) and saved["epochs"] > cfg.epochs:
                cfg.epochs = saved["epochs"]  # an extension whose first checkpoint was not written yet
    elif saved is not None:
        cfg = TrainConfig.from_dict(saved)
        log(f"{run_dir} holds no checkpoint yet (stopped before its first one): starting it from epoch 1")
    else:
        raise CheckpointError(f"{run_dir}: no run to resume (neither last.pt nor config.json)")
    done = ck["epoch"] if ck is not None else 0
    if epochs is not None:
        if epochs < max(done, 1):
            raise ConfigError(f"{run_dir} has trained {done} epochs; a total of {epochs} would train nothing")
        cfg.epochs = epochs
    if extra_epochs is not None:
        cfg.epochs += extra_epochs
    elif done >= cfg.epochs and (ck is None or ck["step"] == 0):
        log(f"{run_dir}: finished ({done} of {cfg.epochs} epochs); nothing to train "
            f"(--extend-epochs N trains N more)")
        return cfg, ck, (ck["history"][-1] if ck and ck["history"] else {})
    return cfg, ck, None


class _Board:
    """TensorBoard events of a run: per epoch the metrics.csv row (loss/train, accuracy/val, ...,
    lr, seconds) and, for a Phased LSTM, the fraction of valid unit-steps whose time gate is open on
    the validation split and the histograms of its learned periods (in the data's time unit) and
    open ratios. A resumed run drops the events of the epochs it repeats (purge_step)."""

    def __init__(self, folder: str, purge_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)

    def epoch(self, row: dict, model, task) -> None:
        from phasedlstm.layers import PhasedLSTM

        step, w = row["epoch"], self.writer
        for split in ("train", "val", "test"):
            for name, key in (("loss", f"{split}_loss"), ("accuracy", f"{split}_acc")):
                if row.get(key) is not None and not math.isnan(row[key]):
                    w.add_scalar(f"{name}/{split}", row[key], step)
        w.add_scalar("lr", row["lr"], step)
        w.add_scalar("seconds", row["seconds"], step)
        rnn = getattr(model, "rnn", None)
        if isinstance(rnn, PhasedLSTM):
            scale = model.time_scale
            if row.get("open_fraction") is not None:
                w.add_scalar("open_fraction/val", row["open_fraction"], step)
            for k in range(rnn.num_layers):
                w.add_histogram(f"period/layer{k}", getattr(rnn, f"period_l{k}").detach().abs() * scale, step)
                w.add_histogram(f"r_on/layer{k}", rnn.open_ratios(k).detach(), step)
        w.flush()


@torch.no_grad()
def open_fraction(model, dataset, batch_size: int = 256) -> float:
    """The fraction of a data set's valid unit-steps at which a Phased LSTM's time gates (every layer
    and direction) are open (k > 0) at evaluation (leak 0): the share of units sparse inference
    computes."""
    rnn = model.rnn
    was = rnn.training
    rnn.eval()
    open_, total = 0, 0
    D = 2 if rnn.bidirectional else 1
    for b in dataset.batches(batch_size):
        valid = torch.arange(b.x.shape[1])[None, :] < b.lengths[:, None]
        for layer in range(rnn.num_layers):
            for direction in range(D):
                k = rnn.time_gates(b.times / model.time_scale, layer, direction)  # (B, T, H)
                open_ += int((k[valid] > 0).sum())
                total += int(valid.sum()) * k.shape[2]
    rnn.train(was)
    return open_ / max(total, 1)


class _Run:
    """One run's training state: the model, optimizer and generators, the history, and where in an
    epoch it stands; its methods are the phases of training (restore, an epoch, an epoch's end)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, progress: bool, log):
        self.cfg, self.run_dir, self.progress, self.log = cfg, run_dir, progress, log
        self.device = pick_device(cfg.device)
        self.dist = _Dist(self.device)
        torch.manual_seed(cfg.seed)
        self.task = build_task(cfg)
        self.derived = derived_options(cfg, self.task)  # (measured once: the model and config.json use it)
        self.model = build_model(cfg, self.task, self.derived).to(self.device)
        self.ddp_model = nn.parallel.DistributedDataParallel(self.model) if self.dist.active else self.model
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, cfg.weight_decay, cfg.optimizer)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict] = []
        self.start_epoch, self.start_step = 0, 0
        self.running = [0.0, 0.0, 0.0]  # loss sum, correct, count
        self.seconds_before = 0.0  # of the epoch resumed inside, trained before its checkpoint
        self.best = None
        self.epoch_gen_state = None
        self.regression = self.task.num_classes == 0
        self.resumed = False
        self.last_row: dict = {}
        self.board = None  # the TensorBoard writer, with cfg.tensorboard

    def restore(self, ck: dict) -> None:
        """Continue from a checkpoint: parameters, optimizer, history, generators, the step inside its epoch."""
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.history = list(ck["history"])
        self.start_epoch, self.start_step = ck["epoch"], ck["step"]
        self.running = list(ck["running"])
        # None before the first epoch's end; a checkpoint saved before keys were tuples holds the one
        # number its rule compared
        best = ck["best"]
        self.best = None if best is None else tuple(best) if isinstance(best, (list, tuple)) else (best,)
        self.gen.set_state(ck["generator_state"])
        self.epoch_gen_state = ck["epoch_generator_state"] if self.start_step else None
        torch.set_rng_state(ck["torch_rng_state"])
        # the resumed epoch's seconds: those trained before the checkpoint plus those after the resume
        self.seconds_before = ck.get("epoch_seconds", 0.0) if self.start_step else 0.0
        if self.start_step and "epoch_seconds" not in ck:
            self.log(f"note: {self.run_dir / 'last.pt'} predates the recording of an epoch's seconds in "
                     f"checkpoints: epoch {self.start_epoch + 1}'s seconds in metrics.csv will count only the "
                     f"time since this resume")
        self.log(f"resuming {self.run_dir} at epoch {self.start_epoch + 1}, step {self.start_step}")
        self.resumed = True

    def start(self) -> None:
        """The run folder's config.json (and, resumed, its metrics cut back to the checkpoint), and the log's head."""
        cfg, dist = self.cfg, self.dist
        self.last_row = self.history[-1] if self.history else {}
        if not dist.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        derived = self.derived
        with _writing(self.run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps({**asdict(cfg), **({"derived": derived} if derived else {})}, indent=2) + "\n")
        if derived:
            self.log(f"time scale from the training data: median gap {derived['median_gap']:.4g} "
                     f"{derived['time_unit']}, median duration {derived['median_duration']:.4g} {derived['time_unit']}; "
                     f"initial periods {derived['periods']}"
                     + (f", r_on {derived['r_on']:.3g}" if "r_on" in derived else ""))
        if self.resumed:
            _write_metrics(self.run_dir, self.history)  # drop rows of epochs the checkpoint does not have
        if cfg.tensorboard:
            self.board = _Board(cfg.tensorboard, purge_step=len(self.history) + 1)
        self.log(f"{self.task.describe()}\nmodel {cfg.model}: {sum(p.numel() for p in self.model.parameters())} "
                 f"parameters, on {self.device}{_kernels_note(self.model, self.device)}"
                 + (f", {dist.world} processes" if dist.active else ""))

    def state(self, epoch, step, epoch_state, epoch_seconds=0.0) -> dict:
        """A checkpoint's contents."""
        return {"config": asdict(self.cfg), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "step": step, "running": list(self.running), "history": self.history,
                "best": self.best, "generator_state": self.gen.get_state(), "epoch_generator_state": epoch_state,
                "torch_rng_state": torch.get_rng_state(), "epoch_seconds": epoch_seconds}

    def train_epoch(self, epoch: int) -> float:
        """The training steps of one epoch (from the resumed step, if any), with a checkpoint every
        checkpoint_seconds inside it. -> its seconds of training."""
        cfg, dist, task = self.cfg, self.dist, self.task
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:  # step decay: a function of the epoch alone (resumes alike)
            group["lr"] = lr_at(cfg, epoch)
        if self.epoch_gen_state is not None:  # resuming inside this epoch: rebuild its batch order
            self.gen.set_state(self.epoch_gen_state)
        self.epoch_gen_state = self.gen.get_state()
        train_set = task.train_for_epoch(epoch)  # fresh-data mode: this epoch's own sequences
        order = train_set.epoch_order(cfg.batch_size, shuffle=True, generator=self.gen, balanced=task.balanced,
                                      shard=(dist.rank, dist.world))
        if not any(len(index) for index in order):
            raise ConfigError(
                f"{len(train_set)} training sequences make no batch of {cfg.batch_size}"
                + (" (a balanced batch takes half its samples from the special class, half from the rest)"
                   if task.balanced else "") + (f" on each of {dist.world} processes" if dist.active else "")
                + ": use more training data (--n-train) or a smaller --batch-size")
        if epoch > self.start_epoch or self.start_step == 0:
            self.running, self.start_step, self.seconds_before = [0.0, 0.0, 0.0], 0, 0.0
        self.model.train()
        last_ck = time.monotonic()
        bar = _progress(range(self.start_step, len(order)), len(order) - self.start_step,
                        f"epoch {epoch + 1}/{cfg.epochs}", self.progress and dist.main)
        running = self.running
        for step in bar:
            x, t, n, y = (v.to(self.device) for v in train_set[order[step]])
            if cfg.noise > 0:
                x = with_input_noise(x, n, cfg.noise, skip=1 if self.model.embedding else 0)
            out = self.ddp_model(x, t, n)
            loss = self.model.loss(out, y)
            penalty = cfg.compute_penalty * self.model.rnn.expected_open_fraction() if cfg.compute_penalty else 0.0
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                                    f"stopped. The last good checkpoint is {self.run_dir / 'last.pt'}")
            self.optimizer.zero_grad(set_to_none=True)
            (loss + penalty).backward()
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            self.optimizer.step()
            running[0] += loss.item() * len(y)
            running[2] += len(y)
            if not self.regression:
                running[1] += int((out.argmax(1) == y).sum())
            if self.progress and dist.main and hasattr(bar, "set_postfix"):
                post = {"loss": f"{running[0] / running[2]:.4f}"}
                if not self.regression:
                    post["acc"] = f"{100 * running[1] / running[2]:.1f}%"
                bar.set_postfix(post)
            if dist.main and time.monotonic() - last_ck > cfg.checkpoint_seconds and step + 1 < len(order):
                save_checkpoint(self.run_dir / "last.pt", self.state(epoch, step + 1, self.epoch_gen_state,
                                                                     self.seconds_before + time.perf_counter() - t0))
                last_ck = time.monotonic()
        return self.seconds_before + time.perf_counter() - t0

    def end_epoch(self, epoch: int, train_seconds: float) -> None:
        """Validation (and the test split when due), selection, checkpoints, metrics.csv and the log line."""
        cfg, task, device, regression = self.cfg, self.task, self.device, self.regression
        loss_sum, correct, count = self.dist.sum(self.running)
        val_loss, val_acc = evaluate(self.model, task.val, device=device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / count,
               "train_acc": None if regression else correct / count,
               "val_loss": val_loss, "val_acc": val_acc, "test_loss": None, "test_acc": None,
               "seconds": round(train_seconds, 3), "lr": self.optimizer.param_groups[0]["lr"],
               "open_fraction": self._open_fraction()}
        score = selection_key(row, cfg.selection, len(task.val) > 0)
        improved = self.best is None or score > self.best
        if improved:
            self.best = score
        # the test split: every test_every epochs, at the last, and whenever validation picks a new best
        # (so the epoch chosen on validation always has its test figure; selection never reads it)
        if improved or (epoch + 1) % cfg.test_every == 0 or epoch + 1 == cfg.epochs:
            row["test_loss"], row["test_acc"] = evaluate(self.model, task.test, device=device)
        self.history.append(row)
        self.last_row = row
        self.running = [0.0, 0.0, 0.0]
        if self.dist.main:
            # best.pt first: a kill between the two writes then leaves last.pt one epoch behind, and the
            # resumed run repeats that epoch (deterministically) and rewrites best.pt; the other order
            # could leave a best.pt older than the best epoch that last.pt records
            if improved:
                save_checkpoint(self.run_dir / "best.pt", self.state(epoch + 1, 0, None))
            save_checkpoint(self.run_dir / "last.pt", self.state(epoch + 1, 0, None))
            _write_metrics(self.run_dir, self.history)
            if self.board is not None:
                self.board.epoch(row, self.model, task)
            parts = [f"{split} loss {_fmt(row[split + '_loss'])}"
                     + ("" if regression else f" acc {_fmt(row[split + '_acc'], True)}")
                     for split in ("train", "val", "test")]
            self.log(f"epoch {epoch + 1}/{cfg.epochs}: {' | '.join(parts)} | {row['seconds']:.1f}s"
                     + (" (best)" if improved else ""))
        self.epoch_gen_state = None

    def time_inference(self) -> None:
        """A Phased LSTM's inference measured at the end of its run: the model of best.pt on the test
        split, dense and sparse, at B = 32 and B = 1 (:func:`phasedlstm.compute.measure_model`), into
        RUN/inference.json and the log."""
        from phasedlstm.compute import measure_model
        from phasedlstm.layers import PhasedLSTM

        if not isinstance(self.model.rnn, PhasedLSTM) or not (self.run_dir / "best.pt").exists():
            return
        ck = load_checkpoint(self.run_dir / "best.pt")
        model = build_model(self.cfg, self.task, self.derived)
        model.load_state_dict(ck["model"])
        try:
            r = measure_model(model, self.task, ck, self.run_dir, repeats=1, single=100)
        except Exception as e:  # (the run itself has finished and is saved: it does not fail on its timing)
            self.log(f"inference not measured ({type(e).__name__}: {e}); phasedlstm compute {self.run_dir} measures it")
            return
        atomic_write_bytes(self.run_dir / "inference.json", (json.dumps(r, indent=2) + "\n").encode())
        self.log(f"inference of epoch {r['epoch']} on the test split, ms per sequence dense / sparse: "
                 f"B=32 {r['B=32 dense ms/seq']:.3f} / {r['B=32 sparse ms/seq']:.3f} ({r['B=32 speed-up']:.1f}x), "
                 f"B=1 {r['B=1 dense ms/seq']:.3f} / {r['B=1 sparse ms/seq']:.3f} ({r['B=1 speed-up']:.1f}x); "
                 f"{100 * r['open_fraction']:.1f}% of unit-steps open")

    def _open_fraction(self) -> float | None:
        """A Phased LSTM's measured share of open unit-steps on the validation split (None otherwise)."""
        from phasedlstm.layers import PhasedLSTM

        if not isinstance(getattr(self.model, "rnn", None), PhasedLSTM) or not len(self.task.val):
            return None
        return round(open_fraction(self.model, self.task.val), 6)

    def check_replicas(self) -> None:
        """Under DDP the ranks' parameters must agree at the end: checked rather than trusted."""
        dist = self.dist
        if not dist.active:
            return
        sums = dist.gather_checksum(self.model)
        if dist.main:
            agree = all(abs(v - sums[0]) <= 1e-6 * max(1.0, abs(sums[0])) for v in sums)
            self.log(f"parameter checksums of {dist.world} ranks: {', '.join(f'{v:.8f}' for v in sums)} -> "
                     + ("ranks agree" if agree else "RANKS DISAGREE"))
            if not agree:
                raise RuntimeError("distributed replicas diverged")
