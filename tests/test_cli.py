"""The command line, run for real in subprocesses: run folders, resume after SIGKILL, bad checkpoints, DDP."""

import pytest
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import torch

TINY = ["--task", "freq-async", "--n-train", "96", "--n-val", "32", "--n-test", "32", "--hidden-size", "8",
        "--proj-size", "4", "--batch-size", "16", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args, check=True, timeout=300, env=None):
    """Run ``phasedlstm ARGS``; env: variables to set beside ENV's."""
    r = subprocess.run([sys.executable, "-m", "phasedlstm", *args], capture_output=True, text=True,
                       env={**ENV, **(env or {})}, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"phasedlstm {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_writes_run_folder(tmp_path):
    run = tmp_path / "run"
    r = cli("train", *TINY, "--model", "phased", "--epochs", "2", "--out", str(run))
    assert "epoch 2/2" in r.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == "freq-async" and cfg["model"] == "phased" and cfg["epochs"] == 2
    assert cfg["rnn_options"]["period_init"] == [1.0, 3.0] and cfg["task_options"]["n_train"] == 96
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                             "seconds", "lr", "open_fraction"]
    assert 0 <= float(rows[1]["test_acc"]) <= 1 and float(rows[1]["lr"]) == 1e-3
    assert 0 < float(rows[1]["open_fraction"]) <= 1  # (a Phased LSTM's measured share of open unit-steps)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ck["format"] == "phasedlstm-checkpoint" and "rnn.period_l0" in ck["model"]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    # a second train into the same folder is refused, not overwritten
    r = cli("train", *TINY, "--epochs", "1", "--out", str(run), check=False)
    assert r.returncode == 1 and "already holds a run; continue it with --resume" in r.stderr
    # evaluate
    r = cli("evaluate", str(run))
    result = json.loads(r.stdout)
    assert result["split"] == "test" and result["n"] == 32 and 0 <= result["accuracy"] <= 1


@pytest.mark.slow
def test_run_log_says_which_loop_the_layers_take(tmp_path):
    """A run on the reference loop is several times slower; its log says so at the start."""
    from phasedlstm import fast

    args = ["train", "--task", "freq-async", "--n-train", "32", "--n-val", "16", "--n-test", "16", "--hidden-size",
            "8", "--batch-size", "16", "--no-progress", "--epochs", "1", "--model"]
    if fast.load():
        r = cli(*args, "lstm", "--out", str(tmp_path / "a"))
        assert "model lstm: " in r.stdout and ", on cpu (fused kernels)" in r.stdout, r.stdout
    r = cli(*args, "phased", "--out", str(tmp_path / "b"), env={"PHASEDLSTM_NO_EXT": "1"})
    assert ", on cpu (the reference loop: fused kernels unavailable, disabled by PHASEDLSTM_NO_EXT=1)" in r.stdout
    from phasedlstm.layers import LSTM
    from phasedlstm.train import _kernels_note
    assert _kernels_note(LSTM(3, 8, proj_size=4), "cpu") == (
        " (the reference loop: the fused kernels have no projections, proj_size > 0)")
    r = cli(*args, "torch-lstm", "--out", str(tmp_path / "d"))
    assert "model torch-lstm: " in r.stdout and ", on cpu\n" in r.stdout  # not ours: nothing to say


def train_and_kill(args, out, ready):
    """Start ``phasedlstm train ARGS --out OUT``, SIGKILL it as soon as its last.pt satisfies
    ``ready(checkpoint)`` (however loaded the machine is: a fixed sleep could land anywhere), and
    return that last.pt as read after the kill."""
    p = subprocess.Popen([sys.executable, "-m", "phasedlstm", "train", *args, "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)

    def reached():  # (last.pt is replaced atomically: a read never sees half a file)
        try:
            return ready(torch.load(out / "last.pt", weights_only=True))
        except FileNotFoundError:
            return False

    deadline = time.time() + 120
    while time.time() < deadline and not reached():
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return torch.load(out / "last.pt", weights_only=True)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    # --checkpoint-seconds 0: a checkpoint after every step, so the kill lands mid-epoch
    args = [*TINY, "--n-train", "960", "--hidden-size", "32", "--model", "lstm", "--epochs", "3",
            "--checkpoint-seconds", "0"]
    full = tmp_path / "full"
    cli("train", *args, "--out", str(full))

    killed = tmp_path / "killed"
    ck = train_and_kill(args, killed, lambda ck: ck["epoch"] == 1 and ck["step"] > 0)
    assert ck["epoch"] < 3, "the run finished before it could be killed; make it longer"
    assert ck["step"] > 0, "killed between epochs; the test means to kill mid-epoch"
    assert ck["epoch_seconds"] > 0  # the killed epoch's training time so far travels in the checkpoint

    r = cli("train", "--resume", str(killed), "--no-progress")
    assert "resuming" in r.stdout and "predates" not in r.stdout
    a, b = metrics(full), metrics(killed)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert ra[k] == rb[k], (k, ra, rb)
    # the resumed epoch's seconds count its time before the kill too, not only the time since the resume
    assert float(b[ck["epoch"]]["seconds"]) >= ck["epoch_seconds"]
    fa = torch.load(full / "last.pt", weights_only=True)["model"]
    fb = torch.load(killed / "last.pt", weights_only=True)["model"]
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0)


@pytest.mark.slow
def test_resume_from_a_checkpoint_without_epoch_seconds_says_so(tmp_path):
    # checkpoints written before epoch_seconds existed still resume; the partial seconds are announced
    args = [*TINY, "--n-train", "960", "--hidden-size", "32", "--model", "lstm", "--epochs", "1",
            "--checkpoint-seconds", "0"]
    run = tmp_path / "run"
    ck = train_and_kill(args, run, lambda ck: True)  # killed at its first checkpoint
    assert ck["epoch"] == 0 and ck["step"] > 0, "the run got past its first epoch before the kill; make it longer"
    from phasedlstm.train import save_checkpoint
    for k in ("epoch_seconds", "sha256", "format", "version"):  # (the last three: save_checkpoint writes them anew)
        del ck[k]
    save_checkpoint(run / "last.pt", ck)
    r = cli("train", "--resume", str(run), "--no-progress")
    assert "predates the recording of an epoch's seconds" in r.stdout and "epoch 1's seconds" in r.stdout
    assert len(metrics(run)) == 1


@pytest.mark.slow
def test_bad_checkpoints_are_refused(tmp_path):
    run = tmp_path / "run"
    cli("train", *TINY, "--model", "lstm", "--epochs", "1", "--out", str(run))
    data = (run / "last.pt").read_bytes()

    (run / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    r = cli("train", "--resume", str(run), check=False)
    assert r.returncode == 1 and "not a readable checkpoint (truncated or corrupt?)" in r.stderr

    (run / "best.pt").write_bytes(b"garbage" * 100)
    r = cli("evaluate", str(run / "best.pt"), check=False)
    assert r.returncode == 1 and "best.pt: not a readable checkpoint" in r.stderr

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    torch.save({"format": "phasedlstm-checkpoint", "evil": Payload()}, buf)
    (run / "last.pt").write_bytes(buf.getvalue())
    r = cli("train", "--resume", str(run), check=False)
    assert r.returncode == 1 and "refused: it holds objects other than tensors" in r.stderr
    assert "pwned" not in r.stdout
    r = cli("evaluate", str(run / "last.pt"), check=False)
    assert r.returncode == 1 and "refused" in r.stderr


@pytest.mark.slow
def test_compare_and_report(tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", *TINY, "--models", "lstm,phased", "--seeds", "0,1", "--epochs", "1", "--out", str(out))
    assert "| lstm | freq-async | 2 | 1 |" in r.stdout and "| phased | freq-async | 2 | 1 |" in r.stdout
    for name in ("summary.md", "summary.csv", "curves.png", "final.png", "gates-phased-seed0.png"):
        assert (out / name).stat().st_size > 0, name
    (out / "curves.png").unlink()
    r = cli("report", str(out))
    assert (out / "curves.png").exists() and "| phased |" in r.stdout
    # compare again: the finished runs are kept, not retrained
    r = cli("compare", *TINY, "--models", "lstm,phased", "--seeds", "0,1", "--epochs", "1", "--out", str(out))
    assert r.stdout.count("finished already") == 4


@pytest.mark.slow
def test_cli_errors():
    r = cli("train", "--task", "adding", "--classes", "1,2", check=False)
    assert r.returncode != 0 and "--classes does not apply to task adding" in r.stderr
    r = cli("train", "--task", "freq-async", "--model", "lstm", "--r-on", "0.1", check=False)
    assert r.returncode != 0 and "apply to --model phased only" in r.stderr
    r = cli("train", "--task", "smnist-rows", "--data-dir", "/nonexistent", "--epochs", "1", "--out",
            "/tmp/phasedlstm-never-written", check=False)
    assert r.returncode == 1 and "phasedlstm data fetch mnist" in r.stderr
    r = cli("tasks")
    assert "freq-async" in r.stdout and "basic-motions" in r.stdout


@pytest.mark.slow
def test_two_process_ddp_on_loopback(tmp_path):
    run = tmp_path / "ddp"
    # --standalone: rendezvous on localhost with a port the OS picks (no race for a free port)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "phasedlstm", "train", *TINY, "--model", "phased",
           "--epochs", "2", "--out", str(run)]
    env = {**ENV, "GLOO_SOCKET_IFNAME": "lo"}  # gloo talks over the loopback interface only
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 processes" in r.stdout and "ranks agree" in r.stdout
    assert len(metrics(run)) == 2
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "config.json", "inference.json", "last.pt",
                                                   "metrics.csv"]  # (the last but one: rank 0 timed inference)
