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
    # a plain or peephole LSTM is ONNX's own LSTM operator (one per layer), the others a Scan
    import onnx

    ops = [n.op_type for n in onnx.load(r["path"]).graph.node]
    if kind in ("lstm", "peephole"):
        assert ops.count("LSTM") == 2 and "Scan" not in ops
    else:
        assert "Scan" in ops and "LSTM" not in ops


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


@pytest.mark.parametrize("kind", ["lstm", "peephole"])
@pytest.mark.parametrize("bias", [True, False])
def test_onnx_lstm_operator_computes_the_layer(kind, bias):
    """impl="onnx" (ONNX's LSTM layout and semantics, in PyTorch) equals the reference loop: lengths,
    two layers, both directions, with and without biases, float64."""
    from phasedlstm import LSTM, PeepholeLSTM

    torch.manual_seed(0)
    cls = {"lstm": LSTM, "peephole": PeepholeLSTM}[kind]
    layer = cls(3, 6, num_layers=2, bidirectional=True, bias=bias, batch_first=True, dtype=torch.float64).eval()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 1, 7])
    h0 = torch.randn(4, 4, 6, dtype=torch.float64)
    c0 = torch.randn(4, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.impl = "reference"
        want = layer(x, (h0, c0), lengths=lengths)
        layer.impl = "onnx"
        got = layer(x, (h0, c0), lengths=lengths)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["lstm", "peephole", "phased", "layernorm"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scan_and_onnx_paths_equal_the_reference(kind, mode):
    """What the graphs run: the scan (the loop body without masking for the Phased LSTM, whose gate
    closes past each sequence's end; the outputs masked after the loop) and the ONNX operator path
    equal the reference loop, with lengths, both directions and NaN in the padding."""
    from phasedlstm.models import MODELS

    torch.manual_seed(0)
    kw = {"r_on": 0.6, "period_init": (0.5, 1.5)} if kind == "phased" else {}
    layer = MODELS[kind](3, 6, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, **kw)
    layer.train(mode == "train")
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 1, 7])
    for b in range(4):
        x[b, lengths[b]:] = float("nan")
    times = torch.rand(4, 9, dtype=torch.float64).cumsum(1)
    with torch.no_grad():
        layer.impl = "reference"
        want = layer(x, times=times, lengths=lengths)
        for impl in ("scan", "onnx"):
            layer.impl = impl
            torch.testing.assert_close(layer(x, times=times, lengths=lengths), want, msg=impl)
