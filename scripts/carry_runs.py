"""Carry unfinished experiment runs from one session to the next through git.

A session may start from a fresh clone (the ninth did, and lost the eighth's runs; the tenth found
the ninth's machine): then ``runs/`` (not committed) is gone, and with it the checkpoints that
``compare`` resumes from.
This script packs them into one committed file:

    python scripts/carry_runs.py save      # at the end of a session: then commit carry/runs.tar
    python scripts/carry_runs.py save --also runs/lecture/psmnist-mean   # and finished ones to extend
    python scripts/carry_runs.py restore   # at the start of the next (scripts/experiments.sh runs it)

``save`` packs every experiment folder (a folder of ``runs/`` whose subfolders are runs) that
holds at least one unfinished run (``last.pt`` short of its configured epochs, or stopped inside
an epoch, or a ``config.json`` with no checkpoint yet), whole: its finished runs come along, so
that ``compare`` does not train them again and ``phasedlstm report`` sees every model.
``--also FOLDER`` packs an experiment folder of finished runs too (runs a later session is to
extend with more epochs: without them it would train them again from the start). ``restore``
unpacks a run only where ``runs/`` does not already hold it with as many epochs, and never into
a folder a running process holds.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import tarfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # (the checkout; tests pass another root)


def progress(run: Path) -> tuple[int, int, bool]:
    """(epochs done, epochs configured, finished) of one run folder, from last.pt (or config.json)."""
    last = run / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        done, step, total = ck["epoch"], ck["step"], ck["config"]["epochs"]
        saved = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
        total = max(total, saved.get("epochs", total))  # an extension not checkpointed yet
        return done, total, done >= total and step == 0
    saved = json.loads((run / "config.json").read_text())
    return 0, saved["epochs"], False


def in_use(run: Path) -> bool:
    """Whether a training process holds the run folder (the flock on RUN/.lock that train takes)."""
    if not (run / ".lock").exists():
        return False
    with open(run / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def runs_under(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.rglob("config.json"))


def save(root: Path = ROOT, also: list[Path] = ()) -> int:
    RUNS, CARRY = root / "runs", root / "carry" / "runs.tar"
    also = {(root / a).resolve() for a in also}
    for a in sorted(also):
        if not a.is_relative_to(RUNS.resolve()) or not runs_under(a):
            print(f"--also {a}: not an experiment folder under {RUNS} (no run folders in it)", file=sys.stderr)
            return 1
    experiments = {}
    for run in runs_under(RUNS):
        done, total, finished = progress(run)
        if not finished:
            experiments.setdefault(run.parent, []).append(f"{run.relative_to(root)} ({done}/{total} epochs)")
        elif run.parent.resolve() in also:
            experiments.setdefault(run.parent, [])
    if not experiments:
        print("no unfinished runs under runs/: nothing to carry")
        if CARRY.exists():
            CARRY.unlink()
            print(f"removed {CARRY.relative_to(root)} (commit its removal)")
        return 0
    CARRY.parent.mkdir(exist_ok=True)
    tmp = CARRY.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for exp, unfinished in sorted(experiments.items()):
            tar.add(exp, arcname=str(exp.relative_to(root)),
                    filter=lambda t: None if t.name.endswith((".tmp", ".lock")) else t)
            print(f"packed {exp.relative_to(root)}: " +
                  (f"unfinished {', '.join(unfinished)}" if unfinished else "finished runs, to extend (--also)"))
    tmp.replace(CARRY)
    print(f"{CARRY.relative_to(root)}: {CARRY.stat().st_size / 2**20:.1f} MiB; commit it")
    return 0


def restore(root: Path = ROOT) -> int:
    RUNS, CARRY = root / "runs", root / "carry" / "runs.tar"
    if not CARRY.exists():
        print(f"no {CARRY.relative_to(root)}: nothing to restore")
        return 0
    with tarfile.open(CARRY) as tar:
        members = tar.getmembers()
        for m in members:  # our own file, but refuse anything that would land outside runs/
            if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in Path(m.name).parts \
                    or Path(m.name).parts[0] != "runs":
                print(f"{CARRY}: refusing member {m.name!r}", file=sys.stderr)
                return 1
        staged = root / "carry" / "staging"
        if staged.exists():
            shutil.rmtree(staged)
        tar.extractall(staged, filter="data")
    for run in runs_under(staged / "runs"):
        target = RUNS / run.relative_to(staged / "runs")
        if in_use(target):
            print(f"kept {target.relative_to(root)}: a run holds it (its .lock)")
            continue
        if target.exists() and (target / "config.json").exists():
            here, there = progress(target)[0], progress(run)[0]
            if here >= there:
                print(f"kept {target.relative_to(root)} ({here} epochs here, {there} in the carry)")
                continue
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(run, target)
        print(f"restored {target.relative_to(root)} ({progress(target)[0]} epochs)")
    shutil.rmtree(staged)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("--also", nargs="+", default=[], type=Path, metavar="FOLDER",
                    help="save: experiment folders under runs/ to pack even where all their runs are finished")
    args = ap.parse_args()
    if args.also and args.action != "save":
        ap.error("--also goes with save")
    return save(also=[p.resolve() for p in args.also]) if args.action == "save" else restore()


if __name__ == "__main__":
    sys.exit(main())
