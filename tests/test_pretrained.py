"""save_pretrained / from_pretrained: config.json + model.safetensors, for every layer, cell and the
experiment model; loading never unpickles; a run exported with its model card."""

import json
import subprocess
import sys

import pytest
import torch

from phasedlstm import (LSTM, LayerNormLSTM, LayerNormLSTMCell, LSTMCell, PeepholeLSTM, PeepholeLSTMCell,
                        PhasedLSTM, PhasedLSTMCell)
from phasedlstm.models import SequenceModel
from phasedlstm.pretrained import PretrainedError

LAYERS = [
    (LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (PeepholeLSTM, dict(batch_first=True, forget_bias=1.0)),
    (PhasedLSTM, dict(period_init=(0.5, 2.0), r_on=0.2, learn_shift=False, dtype=torch.float64)),
    (LayerNormLSTM, dict(num_layers=2, dropout=0.1, learn_initial_state=True)),
]


@pytest.mark.parametrize("cls,kw", LAYERS, ids=[c.__name__ for c, _ in LAYERS])
def test_layers_round_trip(tmp_path, cls, kw):
    torch.manual_seed(0)
    m = cls(4, 6, **kw).eval()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["class"] == cls.__name__ and cfg["args"]["hidden_size"] == 6
    torch.manual_seed(1)  # another initialisation: every number must come from the file
    back = cls.from_pretrained(tmp_path).eval()
    dtype = kw.get("dtype", torch.float32)
    x = torch.randn(5, 3, 4, dtype=dtype)
    call = {"times": torch.arange(5.0, dtype=torch.float64).expand(3, 5)} if cls is PhasedLSTM else {}
    if kw.get("batch_first"):
        x = x.transpose(0, 1)
    a, b = m(x, **call), back(x, **call)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
    if cls is PhasedLSTM:
        assert not back.shift_l0.requires_grad and back.period_init == (0.5, 2.0)


@pytest.mark.parametrize("cls", [LSTMCell, PeepholeLSTMCell, PhasedLSTMCell, LayerNormLSTMCell])
def test_cells_round_trip(tmp_path, cls):
    m = cls(3, 5)
    m.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), back.state_dict().values()))


def test_sequence_model_keeps_its_time_scale(tmp_path):
    m = SequenceModel("phased", 3, 8, 4, pooling="mean", time_scale=0.02, period_init=(0.7, 3.0)).eval()
    m.save_pretrained(tmp_path)
    back = SequenceModel.from_pretrained(tmp_path).eval()
    assert back.time_scale == 0.02
    x, t, n = torch.randn(2, 7, 3), torch.arange(7, dtype=torch.float64).expand(2, 7) * 0.02, torch.tensor([7, 4])
    assert torch.equal(m(x, t, n), back(x, t, n))


def test_wrong_or_damaged_directories_are_refused(tmp_path):
    LSTM(2, 3).save_pretrained(tmp_path / "lstm")
    with pytest.raises(PretrainedError, match="holds a LSTM, not a PhasedLSTM: load it with LSTM.from_pretrained"):
        PhasedLSTM.from_pretrained(tmp_path / "lstm")
    with pytest.raises(PretrainedError, match="no config.json"):
        LSTM.from_pretrained(tmp_path / "nothing")
    (tmp_path / "lstm" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        LSTM.from_pretrained(tmp_path / "lstm")
    LSTM(2, 4).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "lstm" / "config.json").read_text())
    with pytest.raises(PretrainedError, match="do not fit the LSTM"):
        LSTM.from_pretrained(tmp_path / "other")


@pytest.mark.slow
def test_a_fresh_process_loads_without_unpickling(tmp_path):
    """The saved model loads where torch.load and pickle.load are forbidden, with equal outputs."""
    torch.manual_seed(0)
    m = SequenceModel("phased", 3, 8, 4, time_scale=0.5).eval()
    m.save_pretrained(tmp_path / "m")
    x, t, n = torch.randn(2, 6, 3), torch.arange(6, dtype=torch.float64).expand(2, 6), torch.tensor([6, 3])
    torch.save({"x": x, "t": t, "n": n, "want": m(x, t, n)}, tmp_path / "io.pt")
    code = f"""
import pickle, torch
io = torch.load({str(tmp_path / 'io.pt')!r})
def forbidden(*a, **k):
    raise AssertionError("unpickling while loading a pretrained model")
torch.load = pickle.load = pickle.loads = forbidden
from phasedlstm.models import SequenceModel
m = SequenceModel.from_pretrained({str(tmp_path / 'm')!r}).eval()
assert torch.equal(m(io["x"], io["t"], io["n"]), io["want"])
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_export_of_a_run_with_its_model_card(tmp_path):
    from phasedlstm import cli
    from phasedlstm.train import TrainConfig, load_run_model, train

    run = tmp_path / "run"
    train(TrainConfig(task="freq-async", model="phased", hidden_size=8, proj_size=4, batch_size=16, epochs=1,
                      task_options={"n_train": 64, "n_val": 16, "n_test": 16}), run, progress=False,
          log=lambda *a: None)
    assert cli.main(["export", str(run), "--format", "safetensors"]) == 0
    card = (run / "pretrained" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: phasedlstm\n") and "## Time parameters" in card
    assert ("phasedlstm train --task freq-async --model phased --hidden-size 8 --proj-size 4 --epochs 1 --batch-size 16 "
            "--n-train 64 --n-val 16 --n-test 16 --period-init 1.0 6.0") in card
    _, task, model, _ = load_run_model(run)
    back = SequenceModel.from_pretrained(run / "pretrained")
    b = task.test[torch.arange(4)]
    model.eval(), back.eval()
    assert torch.equal(model(b.x, b.times, b.lengths), back(b.x, b.times, b.lengths))


def test_the_classes_work_with_hugging_faces_mixin(tmp_path):
    """With huggingface_hub installed, a layer or the experiment model mixed with PyTorchModelHubMixin
    saves and loads through the Hub's own save_pretrained / from_pretrained (a local folder)."""
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")

    class HubPhased(hub.PyTorchModelHubMixin, PhasedLSTM):
        pass

    class HubModel(hub.PyTorchModelHubMixin, SequenceModel):
        pass

    torch.manual_seed(0)
    layer = HubPhased(3, 8, batch_first=True, period_init=(0.5, 2.0)).eval()
    layer.save_pretrained(tmp_path / "layer")
    assert json.loads((tmp_path / "layer" / "config.json").read_text())["period_init"] == [0.5, 2.0]
    back = HubPhased.from_pretrained(tmp_path / "layer").eval()
    x, t = torch.randn(2, 5, 3), torch.arange(5.0, dtype=torch.float64).expand(2, 5)
    assert torch.equal(layer(x, times=t)[0], back(x, times=t)[0])
    model = HubModel("phased", 3, 8, 4, time_scale=0.5, period_init=(0.1, 2.0)).eval()
    model.save_pretrained(tmp_path / "model")
    again = HubModel.from_pretrained(tmp_path / "model").eval()
    n = torch.tensor([5, 3])
    assert again.time_scale == 0.5 and torch.equal(model(x, t, n), again(x, t, n))
