"""Trained models leave Python: torch.export programs (.pt2) and ONNX models that ONNX Runtime runs
at any batch size and length, equal to the eager model; `phasedlstm export` round trip."""

import json
import warnings

import pytest
import torch

from phasedlstm import cli, fast
from phasedlstm.export import ExportError, example_inputs, export
from phasedlstm.models import SequenceModel

pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")
ONNX_LAYERS = ["lstm", "peephole", "phased", "layernorm"]


def _model(kind, pooling="last"):
    torch.manual_seed(0)
    return SequenceModel(kind, 2, 12, 3, num_layers=2, proj_size=5, pooling=pooling).eval()


@pytest.mark.parametrize("kind", ["lstm", "peephole", "phased", "layernorm"])
def test_torch_export_program_runs_at_other_sizes(kind, tmp_path):
    model = _model(kind, "mean")
    r = export(model, tmp_path / "m.pt2", "pt2")
    program = torch.export.load(r["path"]).module()
    for b, t in ((2, 3), (9, 40)):
        args = example_inputs(model, b, t, seed=b * t)
        with torch.no_grad():
            torch.testing.assert_close(program(*args), model(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ONNX_LAYERS)
def test_onnx_model_runs_in_onnxruntime_at_other_sizes(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the optional extra export (onnxruntime) is not installed")
    pytest.importorskip("onnxscript", reason="the optional extra export (onnxscript) is not installed")
    model = _model(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = export(model, tmp_path / "m.onnx", "onnx")
    # the model is exported in eval mode (no leak, no dropout), and the exporter must see it so
    assert not [w for w in caught if "training mode" in str(w.message)]
    session = ort.InferenceSession(r["path"], providers=["CPUExecutionProvider"])
    for b, t in ((2, 3), (9, 40)):
        x, times, lengths = example_inputs(model, b, t, seed=b + t)
        got = session.run(None, {"x": x.numpy(), "times": times.numpy(), "lengths": lengths.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x, times, lengths), rtol=1e-5, atol=1e-5)


def test_torch_lstm_runs_are_refused_with_a_message(tmp_path):
    with pytest.raises(ExportError, match="torch-lstm models export with torch's own tools"):
        export(_model("torch-lstm"), tmp_path / "m.onnx", "onnx")


@pytest.mark.slow
def test_export_command_round_trip(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the optional extra export (onnxruntime) is not installed")
    run = tmp_path / "run"
    assert cli.main(["train", "--task", "freq-async", "--model", "phased", "--hidden-size", "8", "--epochs", "1",
                     "--n-train", "64", "--n-val", "16", "--n-test", "32", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    for fmt in ("onnx", "pt2"):
        assert cli.main(["export", str(run), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert f"wrote {run / ('model.' + fmt)}" in out and "checked against the eager model on 32 test" in out
        assert (run / f"model.{fmt}").is_file()
    assert json.loads((run / "config.json").read_text())["model"] == "phased"
