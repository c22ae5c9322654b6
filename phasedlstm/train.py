"""Training runs that survive: configuration, the loop, checkpoints, resume, evaluation.

A run folder holds

- ``config.json``: the full configuration (everything needed to rebuild task and model);
- ``metrics.csv``: one row per epoch (epoch, train/val/test loss and accuracy, seconds, lr);
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

import csv
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
from torch import nn

from phasedlstm._files import atomic_path
from phasedlstm.data import Task, get_task, task_options
from phasedlstm.models import SequenceModel

CHECKPOINT_FORMAT = "phasedlstm-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "seconds", "lr"]
TIME_GATED = ("phased",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


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
    clip: float = 10.0  # gradient-norm clipping (0: none)
    seed: int = 0
    device: str = "auto"
    time_feature: str = "auto"  # frequency tasks: timestamps as an input feature; auto: for models without a time gate
    task_options: dict = field(default_factory=dict)
    rnn_options: dict = field(default_factory=dict)  # e.g. period_init, r_on for "phased"
    checkpoint_seconds: float = 60.0  # also checkpoint inside an epoch this often

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}")
        return cls(**d)


# -- building task and model -------------------------------------------------------------------


def resolve_task_options(cfg: TrainConfig) -> dict:
    """The task's options, with the time feature decided for frequency tasks."""
    opts = dict(cfg.task_options)
    if "time_feature" in task_options(cfg.task):
        if cfg.time_feature not in ("auto", "yes", "no"):
            raise ValueError(f"time_feature must be auto, yes or no, got {cfg.time_feature!r}")
        opts["time_feature"] = (cfg.model not in TIME_GATED) if cfg.time_feature == "auto" else cfg.time_feature == "yes"
    elif cfg.time_feature == "yes":
        raise ValueError(f"task {cfg.task!r} has no time-feature option")
    return opts


def build_task(cfg: TrainConfig) -> Task:
    return get_task(cfg.task, seed=cfg.seed, **resolve_task_options(cfg))


def build_model(cfg: TrainConfig, task: Task) -> SequenceModel:
    output = task.num_classes if task.num_classes else 1
    return SequenceModel(cfg.model, task.input_size, cfg.hidden_size, output, cfg.layers, cfg.proj_size,
                         cfg.pooling, cfg.dropout, **cfg.rnn_options)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


# -- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically (temporary file, then rename)."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buf)
    with atomic_path(path) as tmp:
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
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {detail or e}") from None
    except Exception as e:  # truncated or corrupt archives raise RuntimeError, KeyError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a phasedlstm checkpoint")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')}, this phasedlstm reads "
                              f"version {CHECKPOINT_VERSION}")
    return ck


def load_run_model(path, device="cpu") -> tuple[TrainConfig, Task, SequenceModel, dict]:
    """(config, task, model with the checkpoint's weights, checkpoint) from a run folder or a .pt file.

    A folder loads its ``best.pt`` (or ``last.pt`` if there is no best yet)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
    ck = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ck["config"])
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
    """(mean loss, accuracy or None for regression) over ``dataset`` in eval mode."""
    if len(dataset) == 0:
        return float("nan"), None
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
    with atomic_path(run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _selection_score(row: dict, has_val: bool) -> float:
    """What best.pt maximises: validation accuracy, else minus validation loss (regression),
    else minus training loss (no validation split)."""
    if not has_val:
        return -row["train_loss"]
    return row["val_acc"] if row["val_acc"] is not None else -row["val_loss"]


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI); the epoch summaries still print
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, disable=None)


def train(cfg: TrainConfig | None, run_dir, resume: bool = False, progress: bool = True, epochs: int | None = None,
          log=print) -> dict:
    """Train (or, with ``resume``, continue) the run in ``run_dir``; returns the last epoch's metrics row.

    ``epochs`` overrides the configured number of epochs on resume (to extend a run).
    """
    run_dir = Path(run_dir)
    ck = None
    if resume:
        if not (run_dir / "last.pt").exists():
            raise CheckpointError(f"{run_dir / 'last.pt'}: no such checkpoint; nothing to resume in {run_dir}")
        ck = load_checkpoint(run_dir / "last.pt")
        cfg = TrainConfig.from_dict(ck["config"])
        if epochs is not None:
            cfg.epochs = epochs
    elif (run_dir / "last.pt").exists() or (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another --out")
    device = pick_device(cfg.device)
    dist = _Dist(device)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = build_model(cfg, task).to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if dist.active else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch, start_step, running = 0, 0, [0.0, 0.0, 0.0]  # loss sum, correct, count
    best = None
    epoch_gen_state = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history = list(ck["history"])
        start_epoch, start_step = ck["epoch"], ck["step"]
        running = list(ck["running"])
        best = ck["best"]
        gen.set_state(ck["generator_state"])
        epoch_gen_state = ck["epoch_generator_state"] if start_step else None
        torch.set_rng_state(ck["torch_rng_state"])
        log(f"resuming {run_dir} at epoch {start_epoch + 1}, step {start_step}")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        if ck is not None:
            _write_metrics(run_dir, history)  # drop rows of epochs the checkpoint does not have
        log(f"{task.describe()}\nmodel {cfg.model}: {sum(p.numel() for p in model.parameters())} parameters, "
            f"on {device}" + (f", {dist.world} processes" if dist.active else ""))
    regression = task.num_classes == 0

    def state(epoch, step, epoch_state):
        return {"config": asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step, "running": list(running), "history": history, "best": best,
                "generator_state": gen.get_state(), "epoch_generator_state": epoch_state,
                "torch_rng_state": torch.get_rng_state()}

    last_row = history[-1] if history else {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            if epoch_gen_state is not None:  # resuming inside this epoch: rebuild its batch order
                gen.set_state(epoch_gen_state)
            epoch_gen_state = gen.get_state()
            order = task.train.epoch_order(cfg.batch_size, shuffle=True, generator=gen, balanced=task.balanced,
                                           shard=(dist.rank, dist.world))
            if epoch > start_epoch or start_step == 0:
                running, start_step = [0.0, 0.0, 0.0], 0
            model.train()
            last_ck = time.monotonic()
            bar = _progress(range(start_step, len(order)), len(order) - start_step,
                            f"epoch {epoch + 1}/{cfg.epochs}", progress and dist.main)
            for step in bar:
                x, t, n, y = (v.to(device) for v in task.train[order[step]])
                out = ddp_model(x, t, n)
                loss = model.loss(out, y)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                                        f"stopped. The last good checkpoint is {run_dir / 'last.pt'}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                optimizer.step()
                running[0] += loss.item() * len(y)
                running[2] += len(y)
                if not regression:
                    running[1] += int((out.argmax(1) == y).sum())
                if progress and dist.main and hasattr(bar, "set_postfix"):
                    post = {"loss": f"{running[0] / running[2]:.4f}"}
                    if not regression:
                        post["acc"] = f"{100 * running[1] / running[2]:.1f}%"
                    bar.set_postfix(post)
                if dist.main and time.monotonic() - last_ck > cfg.checkpoint_seconds and step + 1 < len(order):
                    save_checkpoint(run_dir / "last.pt", state(epoch, step + 1, epoch_gen_state))
                    last_ck = time.monotonic()
            train_seconds = time.perf_counter() - t0
            loss_sum, correct, count = dist.sum(running)
            val_loss, val_acc = evaluate(model, task.val, device=device)
            test_loss, test_acc = evaluate(model, task.test, device=device)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / count,
                   "train_acc": None if regression else correct / count,
                   "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
                   "seconds": round(train_seconds, 3), "lr": optimizer.param_groups[0]["lr"]}
            history.append(row)
            last_row = row
            score = _selection_score(row, len(task.val) > 0)
            improved = best is None or score > best
            if improved:
                best = score
            running = [0.0, 0.0, 0.0]
            if dist.main:
                save_checkpoint(run_dir / "last.pt", state(epoch + 1, 0, None))
                if improved:
                    save_checkpoint(run_dir / "best.pt", state(epoch + 1, 0, None))
                _write_metrics(run_dir, history)
                parts = [f"{split} loss {_fmt(row[split + '_loss'])}"
                         + ("" if regression else f" acc {_fmt(row[split + '_acc'], True)}")
                         for split in ("train", "val", "test")]
                log(f"epoch {epoch + 1}/{cfg.epochs}: {' | '.join(parts)} | {row['seconds']:.1f}s"
                    + (" (best)" if improved else ""))
            epoch_gen_state = None
        if dist.active:  # DDP keeps replicas equal; check it rather than trust it
            sums = dist.gather_checksum(model)
            if dist.main:
                agree = all(abs(v - sums[0]) <= 1e-6 * max(1.0, abs(sums[0])) for v in sums)
                log(f"parameter checksums of {dist.world} ranks: {', '.join(f'{v:.8f}' for v in sums)} -> "
                    + ("ranks agree" if agree else "RANKS DISAGREE"))
                if not agree:
                    raise RuntimeError("distributed replicas diverged")
    except BaseException:
        dist.close(ok=False)  # a failing rank must not wait in a barrier for the others
        raise
    dist.close()
    return last_row
