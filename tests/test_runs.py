"""Run folders a user can trust: one process per folder, no dead ends, best.pt consistent with
last.pt, no silent reuse of runs made with other settings, flags that mean what they say,
checkpoints whose corruption is found, and command-line values refused at parse time."""

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from phasedlstm import cli
from phasedlstm.train import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    _RunLock,
    load_checkpoint,
    load_run_model,
    save_checkpoint,
    train,
)

CFG = dict(task="freq-async", model="lstm", hidden_size=8, proj_size=4, batch_size=16, epochs=2,
           task_options={"n_train": 64, "n_val": 16, "n_test": 16})
QUIET = dict(progress=False, log=lambda *a: None)


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "phasedlstm", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_second_process_in_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with _RunLock(run):  # this process trains there
        r = _cli("train", "--task", "freq-async", "--model", "lstm", "--hidden-size", 4, "--epochs", 1,
                 "--n-train", 32, "--n-val", 8, "--n-test", 8, "--out", run, "--no-progress")
    assert r.returncode == 1
    assert f"in use by another process (pid {os.getpid()})" in r.stderr
    assert not (run / "config.json").exists()
    train(TrainConfig(**CFG), run, **QUIET)  # the lock died with its holder's release: the folder is usable


def test_folder_with_only_a_configuration_resumes_or_is_taken_over(tmp_path):
    cfg = TrainConfig(**CFG)
    for how in ("resume", "fresh"):
        run = tmp_path / how
        run.mkdir()
        (run / "config.json").write_text(json.dumps(asdict(cfg)))  # stopped before its first checkpoint
        if how == "resume":
            row = train(None, run, resume=True, **QUIET)
        else:
            row = train(cfg, run, **QUIET)
        assert row["epoch"] == 2 and load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_folder_that_is_not_a_run_is_refused_never_taken_over(tmp_path):
    """train --out into someone's folder: nothing there is replaced, and the message says why."""
    cfg = TrainConfig(**CFG)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "bert"}')
    (theirs / "notes.txt").write_text("mine")
    foreign_metrics = tmp_path / "metrics-only"
    foreign_metrics.mkdir()
    (foreign_metrics / "metrics.csv").write_text("step,loss\n1,0.5\n")
    for folder, named in ((theirs, "config.json, notes.txt"), (foreign_metrics, "metrics.csv")):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        with pytest.raises(ConfigError, match=f"not a phasedlstm run \\({named}\\)"):
            train(cfg, folder, **QUIET)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(cfg, tmp_path / "a-file" / "run", **QUIET)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(cfg, empty, **QUIET)["epoch"] == 2  # an empty folder is fine


def test_kill_between_best_and_last_leaves_them_consistent(tmp_path, monkeypatch):
    """A kill after an epoch's first checkpoint write: after resume, best.pt holds the epoch with
    the best validation score in metrics, never an older one."""
    import phasedlstm.train as tr

    real, writes = tr.save_checkpoint, []

    def dying(path, state):
        writes.append(Path(path).name)
        if len(writes) == 3:  # epoch 1: best, last; epoch 2: the first write, then "killed"
            raise KeyboardInterrupt
        real(path, state)

    cfg = TrainConfig(**{**CFG, "epochs": 3, "checkpoint_seconds": 1e9})
    monkeypatch.setattr(tr, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", **QUIET)
    assert writes[:2] == ["best.pt", "last.pt"]
    monkeypatch.setattr(tr, "save_checkpoint", real)
    train(None, tmp_path / "run", resume=True, **QUIET)
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    # the highest validation accuracy, ties broken by the lowest loss (the default selection)
    best_epoch = max(history, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))["epoch"]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == best_epoch


def test_compare_never_reuses_a_run_of_other_settings(tmp_path):
    run = tmp_path / "lstm-seed0"
    cfg = TrainConfig(**CFG)
    cli._run_one(cfg, run, progress=False, log=lambda *a: None)
    other = TrainConfig(**{**CFG, "hidden_size": 4})
    with pytest.raises(ConfigError, match=r"other settings: hidden_size 8 \(asked 4\).*--replace"):
        cli._run_one(other, run, progress=False, log=lambda *a: None)
    fewer = TrainConfig(**{**CFG, "epochs": 1})
    with pytest.raises(ConfigError, match="epochs 2 \\(asked 1\\)"):
        cli._run_one(fewer, run, progress=False, log=lambda *a: None)
    more = TrainConfig(**{**CFG, "epochs": 3})
    cli._run_one(more, run, progress=False, log=lambda *a: None)  # same settings, longer: extended
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    cli._run_one(other, run, progress=False, replace=True, log=lambda *a: None)
    assert load_checkpoint(run / "last.pt")["config"]["hidden_size"] == 4


@pytest.mark.slow
def test_resume_refuses_conflicting_flags_and_extends_by_n(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 1}), run, **QUIET)
    for flag in (["--lr", "0.1"], ["--model", "phased"], ["--task", "adding"], ["--epochs", "5"]):
        r = _cli("train", "--resume", run, *flag)
        assert r.returncode != 0 and "cannot be combined with --resume" in r.stderr, (flag, r.stderr)
    r = _cli("train", "--resume", run, "--extend-epochs", "0")
    assert r.returncode == 2 and "expected an integer >= 1" in r.stderr
    r = _cli("train", "--resume", run, "--extend-epochs", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # one epoch more than the run had
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_phased_run_with_tuple_options_resumes(tmp_path):
    """A Phased LSTM run (period_init is a tuple in the checkpoint, a list in config.json) killed
    mid-run resumes, through train and through compare: the two forms are the same setting."""
    run = tmp_path / "phased-seed0"
    cfg = TrainConfig(**{**CFG, "model": "phased", "epochs": 1, "rnn_options": {"period_init": (1.0, 3.0),
                                                                                "shift_init": 100.0}})
    train(cfg, run, **QUIET)
    train(None, run, resume=True, extra_epochs=1, **QUIET)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    cli._run_one(TrainConfig(**{**asdict(cfg), "epochs": 3}), run, progress=False, log=lambda *a: None)
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_edited_config_json_is_not_silently_ignored(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 1}), run, **QUIET)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "model": "gru"}))
    with pytest.raises(ConfigError, match="differs from the configuration the run was trained with \\(in model\\)"):
        train(None, run, resume=True, extra_epochs=1, **QUIET)


def test_flipped_bit_in_a_checkpoint_is_found(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 1}), run, **QUIET)
    w = load_checkpoint(run / "best.pt")["model"]["rnn.weight_hh_l0"]
    raw = bytearray((run / "best.pt").read_bytes())
    at = raw.find(w.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x40  # one bit of one weight
    (run / "best.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt: its contents do not match the checksum"):
        load_run_model(run)
    r = _cli("evaluate", run)
    assert r.returncode == 1 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_crafted_sizes_are_refused_before_allocating(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 1}), run, **QUIET)
    ck = load_checkpoint(run / "best.pt")
    for hidden, match in ((10**7, "hidden_size must be an integer in \\[1, 65536\\]"), (500, "do not fit")):
        bad = {k: v for k, v in ck.items() if k not in ("format", "version")}
        bad["config"] = {**ck["config"], "hidden_size": hidden}
        save_checkpoint(tmp_path / "bad.pt", bad)  # a valid checksum: crafted, not corrupted
        with pytest.raises(CheckpointError, match=match):
            load_run_model(tmp_path / "bad.pt")


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["--epochs", "-1"], "--epochs: expected an integer >= 1"),
    (["--n-train", "0"], "--n-train: expected an integer >= 1"),
    (["--clip", "nan"], "--clip: expected a finite number >= 0"),
    (["--checkpoint-seconds", "nan"], "--checkpoint-seconds: expected a finite number >= 0"),
    (["--threads", "0"], "--threads: expected an integer >= 1"),
    (["--proj-size", "-1"], "--proj-size: expected an integer >= 0"),
    (["--lr", "inf"], "--lr: expected a number in (0, 10]"),
    (["--dropout", "1"], "--dropout: expected a number in [0, 1)"),
    (["--r-on", "0"], "--r-on: expected a number in (0, 1]"),
    (["--r-on", "nan"], "--r-on: expected a number in (0, 1]"),
    (["--leak", "1"], "--leak: expected a number in [0, 1)"),
    (["--period-init", "1", "1000"], "--period-init: expected a number in [-88, 88]"),
    (["--seed", "99999999999999999999"], "--seed: expected an integer in [0, 2**63)"),
    (["--lr", "1e308"], "--lr: expected a number in (0, 10]"),
    (["--forget-bias", "nan"], "--forget-bias: expected a number in [-100, 100]"),
    (["--classes", "0,0,2"], "--classes: each class once, got '0,0,2' (repeated: 0)"),
    (["--classes", "11"], "--classes: expected two or more distinct classes from 0-9"),
    (["--classes", "3"], "--classes: expected two or more distinct classes from 0-9"),
])
def test_values_that_cannot_train_are_refused_at_parse_time(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--task", "freq-async", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_too_little_data_for_one_batch_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--task", "freq-async", "--n-train", "5", "--epochs", "1", "--out",
                     str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "5 training sequences make no batch of 32" in err and "Traceback" not in err


def test_unknown_task_names_the_closest(capsys):
    assert cli.main(["train", "--task", "freq_async"]) == 1
    err = capsys.readouterr().err
    assert "unknown task 'freq_async'; did you mean 'freq-async'?" in err and "Traceback" not in err


def test_help_matches_behaviour(capsys):
    for argv, want in ((["demo", "--help"], "(default: 20)"), (["train", "--help"], "--extend-epochs N")):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert want in capsys.readouterr().out
    for command in ("compare", "demo"):
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--seed", "3"] + (["--task", "adding"] if command == "compare" else []))
        assert e.value.code == 2  # only --seeds
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "--test-subjects" in out and "test_subjects" not in out


def test_new_options_reach_the_configuration():
    from phasedlstm.train import resolve_task_options

    p = cli.build_parser()
    args = p.parse_args(["train", "--task", "watch", "--model", "lstm", "--drop", "0.9", "--time-feature", "dt",
                         "--forget-bias", "0", "--learn-initial-state"])
    cfg = cli._config(args, "watch", "lstm", 0)
    assert cfg.task_options == {"drop": 0.9}
    assert resolve_task_options(cfg)["time_feature"] == "dt"
    assert cfg.rnn_options == {"forget_bias": 0.0, "learn_initial_state": True}
    args = p.parse_args(["train", "--task", "watch", "--model", "phased"])
    assert resolve_task_options(cli._config(args, "watch", "phased", 0))["time_feature"] == "none"
    with pytest.raises(SystemExit, match="not torch-lstm"):
        cli._config(p.parse_args(["train", "--task", "watch", "--forget-bias", "0"]), "watch", "torch-lstm", 0)
    args = p.parse_args(["train", "--task", "freq-async", "--gate-bias=-0.1,0,0,0"])
    cfg = cli._config(args, "freq-async", "phased", 0)
    assert cfg.rnn_options["gate_bias"] == [-0.1, 0.0, 0.0, 0.0]
    from phasedlstm.train import build_model, build_task

    m = build_model(cfg, build_task(cfg)).rnn
    assert m.bias_ih_l0[:110].eq(torch.tensor(-0.1)).all() and not m.bias_ih_l0[110:].any()
    with pytest.raises(SystemExit, match="not both"):
        cli._config(p.parse_args(["train", "--task", "freq-async", "--gate-bias=0,0,0,0", "--forget-bias", "0"]),
                    "freq-async", "phased", 0)
    with pytest.raises(SystemExit):  # argparse: four numbers expected
        p.parse_args(["train", "--task", "freq-async", "--gate-bias", "0,1"])
    with pytest.raises(ConfigError, match="must be t, dt or no"):
        resolve_task_options(TrainConfig(task="watch", time_feature="yes"))
    assert cli._config(p.parse_args(["train", "--task", "watch", "--optimizer", "rmsprop"]), "watch", "lstm",
                       0).optimizer == "rmsprop"


@pytest.mark.slow
def test_baseline_on_statistics(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the optional extra baselines (scikit-learn) is not installed")
    from phasedlstm import baseline

    r = baseline.run_baseline("freq-async", seed=0, n_train=200, n_val=100, n_test=100)
    assert r["chosen"] in ("logistic regression", "random forest") and r["n_features"] == 7 + 1
    assert 0.5 < r["test_accuracy"] <= 1.0  # the statistics of a sine say something about its period
    out = tmp_path / "b.json"
    real = baseline.get_task  # the CLI's path, on generated data instead of the fetched recordings
    monkeypatch.setattr(baseline, "get_task", lambda name, seed, **o: real(
        "freq-async", seed=seed, n_train=200, n_val=100, n_test=100))
    assert cli.main(["baseline", "--task", "watch", "--seeds", "0,1", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 2


def test_minirocket_input_is_resampled_on_the_median_gap():
    """Irregular series -> regular ones for MiniRocket: linear interpolation between observations on
    a grid of the given gap, padded by repeating the last value (at least 9 points), cut to a length."""
    from phasedlstm.baseline import resampled
    from phasedlstm.data.base import SequenceDataset

    x = np.array([[[0.0, 10.0], [1.0, 10.0], [3.0, 30.0], [0.0, 0.0]], [[5.0, 1.0], [7.0, 1.0], [0, 0], [0, 0]]])
    t = np.array([[0.0, 1.0, 3.0, 3.0], [0.0, 0.5, 0.5, 0.5]])
    ds = SequenceDataset(x, t, [3, 2], [0, 1])
    r = resampled(ds, 1.0)
    assert r.shape == (2, 2, 9)
    np.testing.assert_allclose(r[0, 0], [0, 1, 2, 3, 3, 3, 3, 3, 3])
    np.testing.assert_allclose(r[0, 1], [10, 10, 20, 30, 30, 30, 30, 30, 30])
    np.testing.assert_allclose(r[1, 0], [5] * 9)  # the grid within the span 0-0.5 is the point 0, then padding
    assert resampled(ds, 0.5, length=3).shape == (2, 2, 3)


@pytest.mark.slow
def test_baseline_minirocket(tmp_path):
    pytest.importorskip("aeon", reason="the optional extra baselines (aeon) is not installed")
    from phasedlstm import baseline

    r = baseline.run_baseline("freq-async", seed=0, method="minirocket", n_train=200, n_val=50, n_test=200)
    assert r["chosen"] == "minirocket + ridge" and r["n_features"] > 9000
    assert 0.7 < r["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="method must be one of"):
        baseline.run_baseline("freq-async", method="rocket")


def test_noise_and_weight_decay_are_seeded_and_resume_alike(tmp_path):
    """--noise draws from the run's generator (a resumed run continues the same draws) and changes
    training; --weight-decay trains with AdamW."""
    cfg = TrainConfig(**{**CFG, "epochs": 2, "noise": 0.5, "weight_decay": 0.1})
    whole, split, plain = tmp_path / "whole", tmp_path / "split", tmp_path / "plain"
    train(cfg, whole, **QUIET)
    train(TrainConfig(**{**CFG, "epochs": 1, "noise": 0.5, "weight_decay": 0.1}), split, **QUIET)
    train(None, split, resume=True, extra_epochs=1, **QUIET)
    train(TrainConfig(**{**CFG, "epochs": 2}), plain, **QUIET)
    rows = {k: [{c: v for c, v in r.items() if c != "seconds"} for r in load_checkpoint(d / "last.pt")["history"]]
            for k, d in (("whole", whole), ("split", split), ("plain", plain))}
    assert rows["whole"] == rows["split"] and rows["whole"] != rows["plain"]
    ck = load_checkpoint(whole / "last.pt")
    assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match="noise must be a number in"):
        TrainConfig(**{**CFG, "noise": -1.0}).validate()


def test_lr_decay_follows_the_epoch_and_survives_resume(tmp_path):
    """--lr-decay F --lr-decay-every N: lr * F ** (epoch // N) in every epoch's row, the same
    after a resume; runs made before the option existed still resume and extend."""
    run = tmp_path / "run"
    cfg = TrainConfig(**{**CFG, "epochs": 2, "lr": 0.01, "lr_decay": 0.5, "lr_decay_every": 2})
    train(cfg, run, **QUIET)
    train(None, run, resume=True, extra_epochs=3, **QUIET)
    rows = load_checkpoint(run / "last.pt")["history"]
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    old = tmp_path / "old"
    train(TrainConfig(**{**CFG, "epochs": 1}), old, **QUIET)
    ck = load_checkpoint(old / "last.pt")
    for k in ("lr_decay", "lr_decay_every"):  # as a checkpoint of an older version holds it
        del ck["config"][k]
    save_checkpoint(old / "last.pt", ck)
    cli._run_one(TrainConfig(**{**CFG, "epochs": 2}), old, progress=False, log=lambda *a: None)
    assert load_checkpoint(old / "last.pt")["epoch"] == 2
    with pytest.raises(ConfigError, match="lr_decay"):
        TrainConfig(**{**CFG, "lr_decay": 1.5}).validate()


def test_report_marks_unfinished_runs(tmp_path):
    """A table drawn while a run is still training says how many runs are unfinished."""
    from phasedlstm import report

    done, part = tmp_path / "lstm-seed0", tmp_path / "lstm-seed1"
    train(TrainConfig(**{**CFG, "epochs": 1}), done, **QUIET)
    train(TrainConfig(**{**CFG, "epochs": 1, "seed": 1}), part, **QUIET)
    cfg = json.loads((part / "config.json").read_text())
    (part / "config.json").write_text(json.dumps({**cfg, "epochs": 3}))  # as a run stopped after 1 of 3
    table = report.format_table(report.summarise(report.find_runs([tmp_path])))
    assert "| lstm | freq-async | 2 | 1 (1 unfinished, of 3) |" in table


def test_report_prints_a_solved_mse_that_a_trivial_one_can_be_told_from():
    """The adding problem's MSE: solved is below 0.01, trivial 0.167; two decimals printed a
    solved 0.0037 as 0.00. Accuracies stay in % to two decimals."""
    from phasedlstm import report

    row = {"model": "layernorm", "task": "adding", "metric": "test MSE", "seeds": 1, "epochs": 10,
           "chosen_epochs": "10", "mean": 0.0037, "sd": float("nan"), "seconds_per_epoch": 1.2}
    assert "| 0.0037 (1 seed) |" in report.format_table([row])
    two = {**row, "seeds": 2, "mean": 0.16712, "sd": 0.00031}
    assert "| 0.1671 ± 0.0003 |" in report.format_table([two])
    acc = {**row, "metric": "test accuracy", "seeds": 3, "mean": 98.2946, "sd": 0.1234}
    assert "| 98.29% ± 0.12 |" in report.format_table([acc])



def test_a_report_written_elsewhere_can_be_drawn_again_from_that_folder_alone(tmp_path):
    """report --out keeps each run's config.json and metrics.csv beside the tables: a results folder
    committed without the runs' checkpoints redraws the same summary."""
    from phasedlstm import report

    runs = tmp_path / "runs"
    train(TrainConfig(**{**CFG, "epochs": 2}), runs / "lstm-seed0", **QUIET)
    train(TrainConfig(**{**CFG, "epochs": 2, "seed": 1}), runs / "lstm-seed1", **QUIET)
    first = report.report([runs], tmp_path / "results", log=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "results" / "lstm-seed0").iterdir()) == ["config.json", "metrics.csv"]
    again = report.report([tmp_path / "results"], log=lambda *a: None)
    assert again["table"] == first["table"]
    assert report.read_summary(tmp_path / "results")[0]["mean"] == pytest.approx(first["rows"][0]["mean"])


def test_results_tables_are_drawn_from_the_summaries_and_an_edit_by_hand_is_seen(tmp_path):
    from phasedlstm import report

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.csv").write_text(
        "model,task,metric,seeds,epochs,chosen_epochs,mean,sd,seconds_per_epoch\n"
        "phased,freq-async,test accuracy,3,70,\"65,60,56\",98.66,0.2260,11.99\n")
    text = "# R\n\n<!-- table: a -->\nold\n<!-- end table -->\n"
    drawn = report.update_tables(text, tmp_path)
    assert "| phased | freq-async | 3 | 70 | 98.66% ± 0.23 | 65,60,56 | 12.0 |" in drawn
    assert report.update_tables(drawn, tmp_path) == drawn
    assert report.update_tables(drawn.replace("98.66%", "98.96%"), tmp_path) == drawn


def test_every_table_in_results_md_is_what_the_committed_summaries_give():
    """RESULTS.md's tables are drawn from results/*/summary.csv (`phasedlstm report --tables
    RESULTS.md`): a figure edited by hand, or a summary changed without redrawing, fails here."""
    from phasedlstm import report

    root = Path(__file__).resolve().parents[1]
    text = (root / "RESULTS.md").read_text()
    assert text.count("<!-- table:") >= 10
    assert report.update_tables(text, root) == text


def test_settings_refused_before_training_say_so_in_one_line(tmp_path, capsys):
    """--period-init A B with A >= B, and --device cuda without a GPU: one line, no traceback, nothing trained."""
    out = tmp_path / "r"
    with pytest.raises(SystemExit, match="A must be below B, got 3 1"):
        cli.main(["train", "--task", "freq-async", "--model", "phased", "--period-init", "3", "1", "--out", str(out)])
    if not torch.cuda.is_available():
        assert cli.main(["train", "--task", "freq-async", "--device", "cuda", "--out", str(out), "--no-progress"]) == 1
        assert "--device cuda was asked for, but torch sees no CUDA device" in capsys.readouterr().err
    assert not (out / "last.pt").exists()


def test_period_init_beyond_float32_is_refused_at_construction():
    from phasedlstm import PhasedLSTM, PhasedLSTMCell

    for cls in (PhasedLSTM, PhasedLSTMCell):
        with pytest.raises(ValueError, match="beyond float32's range"):
            cls(2, 4, period_init=(1, 1000))


TINY_COMPARE = ["--task", "freq-async", "--n-train", "64", "--n-val", "16", "--n-test", "16", "--hidden-size", "6",
                "--proj-size", "4", "--batch-size", "16", "--epochs", "1", "--seeds", "0", "--no-progress"]


def test_compare_takes_a_flag_at_its_default_as_the_same_setting(tmp_path, capsys):
    """A run made without --fresh / --forget-bias is the run asked for with --fresh yes --forget-bias 1
    (their defaults): kept, not refused with a suggestion to --replace it."""
    out = str(tmp_path / "cmp")
    assert cli.main(["compare", *TINY_COMPARE, "--models", "lstm", "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["compare", *TINY_COMPARE, "--models", "lstm", "--fresh", "yes", "--forget-bias", "1",
                     "--out", out]) == 0
    assert "finished already" in capsys.readouterr().out
    assert cli.main(["compare", *TINY_COMPARE, "--models", "lstm", "--forget-bias", "0", "--out", out]) == 1
    assert "holds a run with other settings: rnn_options" in capsys.readouterr().err


def test_compare_applies_model_options_to_their_models_and_refuses_before_training(tmp_path, capsys):
    out = tmp_path / "mixed"
    assert cli.main(["compare", *TINY_COMPARE, "--models", "phased,lstm", "--r-on", "0.1", "--out", str(out)]) == 0
    phased = json.loads((out / "phased-seed0" / "config.json").read_text())
    lstm = json.loads((out / "lstm-seed0" / "config.json").read_text())
    assert phased["rnn_options"]["r_on"] == 0.1 and "r_on" not in lstm["rnn_options"]
    nothing = tmp_path / "none"
    with pytest.raises(SystemExit, match="apply to --model phased only"):
        cli.main(["compare", *TINY_COMPARE, "--models", "lstm,peephole", "--r-on", "0.1", "--out", str(nothing)])
    assert not nothing.exists()  # refused before any run started


def test_an_unreadable_pickle_is_one_line_that_never_suggests_loading_it_unsafely(tmp_path, monkeypatch):
    import pickle

    bad = tmp_path / "last.pt"
    bad.write_bytes(b"x")
    message = ("Weights only load failed. This file can still be loaded, to do so you have two options\n"
               "\t(1) Re-running `torch.load` with `weights_only` set to `False` will likely succeed\n"
               "\tWeightsUnpickler error: Unsupported operand 149\n")
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(pickle.UnpicklingError(message)))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    text = str(e.value)
    assert "\n" not in text and "weights_only" not in text and "Unsupported operand 149" in text


def test_a_run_without_a_checkpoint_says_it_has_not_finished_an_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(TrainConfig(**CFG))))
    with pytest.raises(CheckpointError, match="has not finished an epoch yet"):
        load_run_model(run)


def test_a_full_disk_while_checkpointing_loses_nothing_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """OSError 28 while writing last.pt: one line (the disk is full, nothing lost, how to continue);
    the previous checkpoint intact, no temporary file left; the same command then continues."""
    from pathlib import Path

    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 1}), run, **QUIET)
    before = (run / "last.pt").read_bytes()
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".last.pt."):
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert cli.main(["train", "--resume", str(run), "--extend-epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {run / 'last.pt'}: the disk is full. Nothing is lost") and "\n" not in err
    assert "the previous last.pt is as it was" in err and f"--resume {run}" in err
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp"))
    monkeypatch.setattr(Path, "write_bytes", real)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0  # as the message says
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_tensorboard_events_hold_the_numbers_of_metrics_csv(tmp_path):
    """--tensorboard: every epoch's row as scalars (the same numbers as metrics.csv), and for a Phased
    LSTM the open fraction and histograms; a resumed run does not repeat epochs in the events."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    run = tmp_path / "run"
    cfg = TrainConfig(**{**CFG, "model": "phased", "epochs": 1, "tensorboard": str(board)})
    train(cfg, run, **QUIET)
    train(None, run, resume=True, extra_epochs=1, **QUIET)
    ea = EventAccumulator(str(board), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    for tag, col in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"), ("lr", "lr"), ("loss/test", "test_loss")):
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        assert [e.value for e in events] == pytest.approx([float(r[col]) for r in rows], rel=1e-6), tag
    fractions = [e.value for e in ea.Scalars("open_fraction/val")]
    assert len(fractions) == 2 and all(0 < f <= 1 for f in fractions)
    assert len(ea.Histograms("period/layer0")) == 2 and len(ea.Histograms("r_on/layer0")) == 2


def _history(*rows):
    return [{"epoch": i + 1, "train_loss": 1.0, "val_acc": a, "val_loss": l, "test_acc": t, "test_loss": 0.0,
             "seconds": 1.0} for i, (a, l, t) in enumerate(rows)]


def test_selection_breaks_tied_accuracies_by_loss_and_old_runs_keep_their_rule():
    """Tied validation accuracies (a small validation set that saturates) pick the epoch of lowest
    validation loss; a run saved before the rule existed keeps the first of ties, as its best.pt did."""
    from phasedlstm import report

    hist = _history((0.9, 0.5, 0.80), (1.0, 0.30, 0.91), (1.0, 0.10, 0.99), (1.0, 0.20, 0.95), (0.95, 0.05, 0.97))
    pick = lambda cfg: report.chosen_row({"config": cfg, "history": hist})["epoch"]  # noqa: E731
    assert pick({"selection": "accuracy-loss"}) == 3
    assert pick({"selection": "accuracy"}) == 2
    assert pick({"selection": "loss"}) == 5
    assert pick({}) == 2  # config.json without the key: the rule it was trained with
    assert TrainConfig.from_dict({"task": "adding"}).selection == "accuracy"
    assert TrainConfig(task="adding").selection == "accuracy-loss"
    with pytest.raises(ConfigError, match="selection must be one of"):
        TrainConfig.from_dict({"task": "adding", "selection": "test"})


def test_best_checkpoint_follows_the_selection_rule(tmp_path):
    """best.pt holds the epoch that report names, under each rule."""
    from phasedlstm import report

    for rule in ("accuracy-loss", "accuracy", "loss"):
        run = tmp_path / rule
        train(TrainConfig(**{**CFG, "epochs": 4, "selection": rule}), run, **QUIET)
        chosen = report.chosen_row(report.read_run(run))["epoch"]
        assert load_checkpoint(run / "best.pt")["epoch"] == chosen


def test_a_checkpoint_with_a_plain_number_as_its_best_resumes(tmp_path):
    """Checkpoints written before selection keys were tuples hold one number; resuming compares it."""
    run = tmp_path / "run"
    train(TrainConfig(**{**CFG, "epochs": 2, "selection": "accuracy"}), run, **QUIET)
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(run / name)
        ck["best"] = ck["best"][0]
        save_checkpoint(run / name, ck)
    train(None, run, resume=True, extra_epochs=1, **QUIET)
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_summary_and_table_give_the_last_epoch_beside_the_chosen_one(tmp_path):
    from phasedlstm import report

    runs = tmp_path / "runs"
    for seed in (0, 1):
        train(TrainConfig(**{**CFG, "epochs": 3, "seed": seed}), runs / f"lstm-seed{seed}", **QUIET)
    out = report.report([runs], tmp_path / "results", log=lambda *a: None, gates=False)
    row = out["rows"][0]
    last = [100 * report.read_run(runs / f"lstm-seed{s}")["history"][-1]["test_acc"] for s in (0, 1)]
    assert row["last_seeds"] == 2 and row["last_mean"] == pytest.approx(sum(last) / 2)
    assert "test accuracy at the last epoch" in out["table"].splitlines()[0]
    assert report.read_summary(tmp_path / "results")[0]["last_mean"] == pytest.approx(row["last_mean"])


def test_every_folder_a_results_table_is_drawn_from_keeps_its_runs():
    """No table in RESULTS.md reports a summary whose runs are not committed beside it: every
    model's seeds have their config.json and metrics.csv, so `phasedlstm report` redraws the table
    (the test below checks that it gives the same figures)."""
    import re

    from phasedlstm import report

    root = Path(__file__).resolve().parents[1]
    folders = {f for line in re.findall(r"<!-- table: (.*?) -->", (root / "RESULTS.md").read_text())
               for f in line.split()}
    assert len(folders) >= 10
    for name in sorted(folders):
        folder = root / name
        if name.endswith(".json"):  # (a baseline's table: the file is its record, seed by seed)
            assert folder.is_file(), name
            continue
        for row in report.read_summary(folder):
            kept = [d for d in folder.glob(f"{row['model']}-seed*")
                    if (d / "config.json").is_file() and (d / "metrics.csv").is_file()]
            assert len(kept) >= int(row["seeds"]), (name, row["model"], "runs missing beside the summary")


def test_every_committed_results_folder_with_runs_regenerates_its_summary():
    """A results folder that keeps its runs' config.json and metrics.csv gives, through `report`,
    the summary.csv committed beside them (chosen epochs, means, last-epoch figures)."""
    from phasedlstm import report

    root = Path(__file__).resolve().parents[1] / "results"
    folders = sorted({p.parent.parent for p in root.glob("*/*/*/metrics.csv")} - {root / "models"})
    assert len(folders) >= 10
    for folder in folders:
        drawn = report.summarise(report.find_runs([folder]))
        kept = report.read_summary(folder)
        assert [r["model"] for r in drawn] == [r["model"] for r in kept], folder
        for d, k in zip(drawn, kept):
            assert d["chosen_epochs"] == k["chosen_epochs"], folder
            for key in ("seeds", "epochs", "last_seeds"):
                assert d[key] == k[key], (folder, key)
            for key in ("mean", "sd", "last_mean", "last_sd"):
                assert d[key] == pytest.approx(k[key], rel=1e-9, nan_ok=True), (folder, key)


def test_a_table_of_several_folders_names_each_rows_folder(tmp_path):
    from phasedlstm import report

    for name, mean in (("adding-100", 0.0037), ("adding-200", 0.1561)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.csv").write_text(
            "model,task,metric,seeds,epochs,chosen_epochs,mean,sd,seconds_per_epoch\n"
            f"lstm,adding,test MSE,1,10,10,{mean},0.0,4.0\n")
    drawn = report.update_tables("<!-- table: adding-100 adding-200 -->\n<!-- end table -->\n", tmp_path)
    assert "| adding-100 | lstm | adding | 1 | 10 | 0.0037 (1 seed) |" in drawn
    assert "| adding-200 | lstm | adding | 1 | 10 | 0.1561 (1 seed) |" in drawn
    one = report.update_tables("<!-- table: adding-100 -->\n<!-- end table -->\n", tmp_path)
    assert "folder" not in one


def test_a_run_killed_inside_its_first_epoch_resumes(tmp_path):
    """Its checkpoint has no best epoch yet (None), which resuming keeps as none."""
    import phasedlstm.train as tr

    real, calls = tr.save_checkpoint, []

    def dying(path, state):
        calls.append(path)
        real(path, state)
        if state["step"] > 0:
            raise KeyboardInterrupt

    cfg = TrainConfig(**{**CFG, "epochs": 1, "checkpoint_seconds": 0})
    tr.save_checkpoint = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "run", **QUIET)
    finally:
        tr.save_checkpoint = real
    assert load_checkpoint(tmp_path / "run" / "last.pt")["best"] is None
    train(None, tmp_path / "run", resume=True, **QUIET)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
