"""Leaving Python: a trained model as a torch.export program (.pt2) or an ONNX model (.onnx).

Both take the whole :class:`phasedlstm.models.SequenceModel` (projection, recurrent layer,
pooling, readout) with inputs ``x`` (B, T, I) float32, ``times`` (B, T) float64 and ``lengths``
(B,) int64, the batch size and the sequence length dynamic. Each file is checked against the
eager model on a batch before it is reported written.

- ``pt2``: ``torch.export`` of the fused path; the graph calls the kernels' C++ operators, so
  loading it (``torch.export.load``) needs them registered: ``import phasedlstm`` first.
- ``onnx``: the recurrent layers switch to ``impl="scan"`` (the reference equations inside
  torch's scan operator, which becomes ONNX's Scan), so ONNX Runtime runs the model at any
  batch size and length with nothing of this library (all four layers).
  Needs the optional extra: ``pip install "phasedlstm[export]"``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from phasedlstm.layers import RecurrentLayer

FORMATS = ("onnx", "pt2")


class ExportError(RuntimeError):
    """An export that failed or whose file does not reproduce the eager model."""


def _dynamic():
    B, T = torch.export.Dim("batch", min=2, max=1 << 16), torch.export.Dim("seq", min=2, max=1 << 24)
    return {"x": {0: B, 1: T}, "times": {0: B, 1: T}, "lengths": {0: B}}


class _Graphable(torch.nn.Module):
    """The model's forward with plain positional inputs (what exporters trace)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train(model.training)  # (a new Module is in training mode: the exporter would warn for an eval model)

    def forward(self, x, times, lengths):
        return self.model(x, times, lengths)


def example_inputs(model, batch: int = 3, steps: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, model.proj.in_features if hasattr(model.proj, "in_features")
                    else model.rnn.input_size, generator=g)
    times = torch.rand(batch, steps, generator=g, dtype=torch.float64).add(0.05).cumsum(1)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    lengths[0] = steps
    return x, times, lengths


def _check(got, want, what: str, rtol=1e-4, atol=1e-5) -> float:
    got = torch.as_tensor(got)
    err = float((got.double() - want.double()).abs().max())
    if not torch.allclose(got.to(want.dtype), want, rtol=rtol, atol=atol):
        raise ExportError(f"{what} differs from the eager model by up to {err:.3g}")
    return err


def export(model, path, fmt: str, check_inputs=None) -> dict:
    """Write ``model`` (a SequenceModel, in eval mode) to ``path`` as ``fmt``; check it against
    eager on ``check_inputs`` (x, times, lengths; default: random) and at another batch size and
    length. Returns {"path", "format", "max_abs_error"}."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if isinstance(model.rnn, torch.nn.LSTM):
        raise ExportError("torch-lstm models export with torch's own tools; this exports this library's layers")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    trace_args = example_inputs(model)
    checks = [check_inputs] if check_inputs is not None else []
    checks.append(example_inputs(model, batch=5, steps=11, seed=1))
    errors = []
    if fmt == "pt2":
        with torch.no_grad():
            ep = torch.export.export(_Graphable(model), trace_args, dynamic_shapes=_dynamic())
        torch.export.save(ep, str(path))
        loaded = torch.export.load(str(path)).module()
        for args in checks:
            with torch.no_grad():
                errors.append(_check(loaded(*args), model(*args), f"{path} (torch.export)"))
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError('ONNX export needs the optional extra: pip install "phasedlstm[export]"') from None
        for m in model.modules():
            if isinstance(m, RecurrentLayer):
                m.impl = "scan"
        try:
            program = torch.onnx.export(_Graphable(model), trace_args, dynamo=True, dynamic_shapes=_dynamic(), verbose=False,
                                        input_names=["x", "times", "lengths"], output_names=["logits"])
        except Exception as e:
            raise ExportError(f"ONNX export of a {type(model.rnn).__name__} failed: "
                              f"{str(e).strip().splitlines()[0][:300]}") from None
        program.save(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for args in checks:
            feed = {"x": args[0].numpy(), "times": args[1].numpy(), "lengths": args[2].numpy()}
            with torch.no_grad():
                errors.append(_check(session.run(None, feed)[0], model(*args), f"{path} (ONNX Runtime)"))
    return {"path": str(path), "format": fmt, "max_abs_error": max(errors)}


ONNX_EXAMPLE = """import numpy as np, onnxruntime as ort
session = ort.InferenceSession("{path}")
x = np.random.randn(4, 50, {inputs}).astype(np.float32)                  # (batch, steps, features)
times = np.cumsum(np.random.rand(4, 50), axis=1)                         # float64 timestamps
lengths = np.array([50, 31, 12, 40], dtype=np.int64)
logits = session.run(None, {{"x": x, "times": times, "lengths": lengths}})[0]
print(logits.argmax(1))"""

PT2_EXAMPLE = """import torch, phasedlstm  # registers the kernels' operators the program calls
program = torch.export.load("{path}").module()
x, times = torch.randn(4, 50, {inputs}), torch.rand(4, 50, dtype=torch.float64).cumsum(1)
logits = program(x, times, torch.tensor([50, 31, 12, 40]))"""
