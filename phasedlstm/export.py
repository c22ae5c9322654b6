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

from phasedlstm import paths
from phasedlstm.cells import plain_layer_norm
from phasedlstm.layers import BatchNormLSTM, RecurrentLayer

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
    if isinstance(model.rnn, BatchNormLSTM):
        raise ExportError("a BatchNormLSTM (model batchnorm) does not export to .pt2 or ONNX: its per-step "
                          "statistics are indexed by a step count that the graphs do not keep; run it in PyTorch "
                          "or export --format safetensors")
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
                m.impl = "onnx"  # ONNX's LSTM operator where it computes the layer, else a Scan
        try:
            with plain_layer_norm():  # (one LayerNormalization per normalisation in the Scan's body)
                program = torch.onnx.export(_Graphable(model), trace_args, dynamo=True, dynamic_shapes=_dynamic(),
                                            verbose=False, input_names=["x", "times", "lengths"],
                                            output_names=["logits"],
                                            custom_translation_table=paths.onnx_lstm.TRANSLATIONS)
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


# -- a run as a pretrained directory (config.json + model.safetensors + a model card) -----------------


def train_command(cfg) -> str:
    """A ``phasedlstm train`` command line that builds ``cfg`` (a TrainConfig): its settings that
    differ from the defaults, as flags."""
    from dataclasses import fields

    from phasedlstm.train import TrainConfig

    skip = {"task", "model", "task_options", "rnn_options", "checkpoint_seconds", "device", "test_every", "tensorboard"}
    parts = ["phasedlstm train", f"--task {cfg.task}", f"--model {cfg.model}"]
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        v = getattr(cfg, f.name)
        if v != f.default:
            parts.append(f"--{'layers' if f.name == 'layers' else f.name.replace('_', '-')} {v}")
    for k, v in cfg.task_options.items():
        if k == "sha256":
            continue
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, bool):
            parts.append(flag if k != "fresh" else f"{flag} {'yes' if v else 'no'}")
        elif isinstance(v, (list, tuple)):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    rnn = dict(cfg.rnn_options)
    if cfg.model == "phased":  # (the layer's own default, where the configuration names none)
        rnn.setdefault("period_init", (1.0, 6.0))
    for k in ("learn_period", "learn_shift", "learn_r_on"):
        if rnn.pop(k, True) is False:
            parts.append("--fixed-" + k.removeprefix("learn_").replace("_", "-"))
    for k, v in rnn.items():
        if k == "period_init":
            parts.append(f"--period-init {v}" if v == "auto" else f"--period-init {v[0]} {v[1]}")
        elif k == "gate_bias":
            parts.append(f"--gate-bias={','.join(map(str, v))}")
        elif k == "learn_initial_state":
            if v:
                parts.append("--learn-initial-state")
        else:
            parts.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(parts)


def _percent(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def model_card(cfg, task, model, ck) -> str:
    """A model card (the Hugging Face Hub's layout: YAML front matter, then Markdown) for a run."""
    from phasedlstm import __version__
    from phasedlstm.layers import PhasedLSTM

    row = next((r for r in ck["history"] if r["epoch"] == ck["epoch"]), ck["history"][-1] if ck["history"] else {})
    metric = "accuracy" if task.num_classes else "mse"
    lines = ["---", "library_name: phasedlstm", "tags:", "- time-series", "- recurrent-neural-network",
             f"- {cfg.model}", f"datasets:\n- {cfg.task}", f"metrics:\n- {metric}", "---", "",
             f"# {cfg.model} on {cfg.task}", "",
             f"A `phasedlstm.models.SequenceModel` (phasedlstm {__version__}): a linear projection to "
             f"{cfg.proj_size or 'no'} features, a {cfg.model} layer of {cfg.hidden_size} units"
             f"{f' ({cfg.layers} layers)' if cfg.layers > 1 else ''}, {cfg.pooling} pooling over the valid steps, "
             f"and a linear readout to {task.num_classes or 1} {'classes' if task.num_classes else 'output'}.", "",
             "## Data", "", f"`{task.describe()}`.", ""]
    if task.num_classes:
        classes = task.info.get("classes")
        if classes:
            lines += [f"Classes, in the order of the outputs: {', '.join(map(str, classes))}.", ""]
    lines += ["## Training", "", "```bash", train_command(cfg), "```", "",
              f"Seed {cfg.seed}; the weights are those of epoch {ck['epoch']}, the epoch chosen on validation "
              f"({'the highest validation accuracy' if task.num_classes else 'the lowest validation loss'}).", "",
              "## Results", "", "| split | loss | accuracy |", "|---|---|---|"]
    for split in ("train", "val", "test"):
        lines.append(f"| {split} | {row.get(f'{split}_loss', float('nan')):.4f} | {_percent(row.get(f'{split}_acc'))} |")
    lines.append("")
    if isinstance(model.rnn, PhasedLSTM):
        scale = model.time_scale
        lines += ["## Time parameters", "", f"Timestamps are divided by {scale:.6g} ({task.time_unit}) before the layer; "
                  f"in the data's unit:", "", "| layer | period τ (min / median / max) | open ratio r_on (min / median / max) |",
                  "|---|---|---|"]
        for k in range(model.rnn.num_layers):
            tau = getattr(model.rnn, f"period_l{k}").detach().abs() * scale
            r = model.rnn.open_ratios(k).detach()
            lines.append(f"| {k} | {tau.min():.4g} / {tau.median():.4g} / {tau.max():.4g} {task.time_unit} | "
                         f"{r.min():.3g} / {r.median():.3g} / {r.max():.3g} |")
        lines.append("")
    lines += ["## Use", "", "```python", "import torch", "from phasedlstm.models import SequenceModel", "",
              "model = SequenceModel.from_pretrained(\"THIS_FOLDER\").eval()",
              f"x = torch.randn(2, 50, {task.input_size})                     # (batch, steps, {task.input_size})",
              "times = torch.arange(50, dtype=torch.float64).expand(2, 50)   # timestamps, in the data's unit",
              "lengths = torch.tensor([50, 30])", "logits = model(x, times, lengths)", "```", "",
              ]
    scaling = task.info.get("scaling")
    if isinstance(scaling, dict) and "mean" in scaling:
        lines += ["Each input channel is standardised as in training: (x - mean) / s.d., with", "",
                  f"- mean: {', '.join(f'{v:.6g}' for v in scaling['mean'])}",
                  f"- s.d.: {', '.join(f'{v:.6g}' for v in scaling['std'])}", ""]
    elif isinstance(scaling, dict) and "min" in scaling:
        lines += [f"The inputs are scaled as in training: (x - {scaling['min']:g}) / "
                  f"({scaling['max']:g} - {scaling['min']:g}).", ""]
    return "\n".join(lines)


def export_pretrained(run, out=None) -> Path:
    """A run folder (its best.pt) as ``config.json`` + ``model.safetensors`` + ``README.md`` in ``out``
    (default: RUN/pretrained)."""
    from phasedlstm.train import load_run_model

    cfg, task, model, ck = load_run_model(run)
    out = Path(out) if out is not None else Path(run) / "pretrained"
    return model.save_pretrained(out, card=model_card(cfg, task, model, ck))
