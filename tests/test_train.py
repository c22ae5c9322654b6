"""The training loop in-process: a non-finite loss stops with epoch and step, keeping the last checkpoint."""

import pytest
import torch

from phasedlstm.models import SequenceModel
from phasedlstm.train import NonFiniteLoss, TrainConfig, load_checkpoint, train

CFG = dict(task="freq-async", model="lstm", hidden_size=8, proj_size=4, batch_size=16, epochs=3,
           task_options={"n_train": 64, "n_val": 16, "n_test": 16})


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    real = SequenceModel.loss
    calls = {"n": 0}

    def loss(self, out, y):
        calls["n"] += self.training  # count training steps only, not evaluation
        value = real(self, out, y)
        return value * float("nan") if self.training and calls["n"] == 6 else value  # epoch 2, step 2 of 4

    monkeypatch.setattr(SequenceModel, "loss", loss)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at epoch 2, step 2; stopped. The last good "
                                            r"checkpoint is .*last.pt"):
        train(TrainConfig(**CFG), tmp_path / "run", progress=False, log=lambda *a: None)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_seeded_runs_repeat(tmp_path):
    a = train(TrainConfig(**CFG, seed=3), tmp_path / "a", progress=False, log=lambda *a: None)
    b = train(TrainConfig(**CFG, seed=3), tmp_path / "b", progress=False, log=lambda *a: None)
    c = train(TrainConfig(**CFG, seed=4), tmp_path / "c", progress=False, log=lambda *a: None)
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    assert a["train_loss"] != c["train_loss"]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown configuration keys \['colour'\]"):
        TrainConfig.from_dict({"task": "adding", "colour": "red"})


def test_rmsprop_trains_and_resumes_with_its_own_state(tmp_path):
    """--optimizer rmsprop: the run steps with RMSprop (its square averages in the checkpoint, so a
    resumed run continues it); a configuration saved without the key is Adam's; RMSprop with
    AdamW's decoupled weight decay, or an unknown name, is refused."""
    from phasedlstm.train import ConfigError

    cfg = TrainConfig(**{**CFG, "epochs": 1}, optimizer="rmsprop")
    train(cfg, tmp_path / "r", progress=False, log=lambda *a: None)
    state = load_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["state"]
    assert state and all("square_avg" in s for s in state.values())
    adam = train(TrainConfig(**{**CFG, "epochs": 1}), tmp_path / "a", progress=False, log=lambda *a: None)
    rms = train(cfg, tmp_path / "r2", progress=False, log=lambda *a: None)
    assert adam["train_loss"] != rms["train_loss"]
    assert TrainConfig.from_dict({"task": "adding"}).optimizer == "adam"
    with pytest.raises(ConfigError, match="applies to optimizer adam only"):
        TrainConfig.from_dict({"task": "adding", "optimizer": "rmsprop", "weight_decay": 0.1})
    with pytest.raises(ConfigError, match=r"optimizer must be one of \['adam', 'rmsprop'\], got 'sgd'"):
        TrainConfig.from_dict({"task": "adding", "optimizer": "sgd"})
