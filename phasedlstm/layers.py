"""The loop over time: multi-layer, bidirectional sequence layers with torch.nn.LSTM's API.

One base class, :class:`RecurrentLayer`, owns everything the five layers share:
parameter naming (``weight_ih_l{k}``, ``..._reverse``), argument checks, the loop
over time with ``lengths`` masking, reversal for the backward direction, dropout
between layers and the initial state. Each layer adds only

- ``_param_shapes``: its extra per-layer parameters,
- ``_precompute``: the state-free work of all steps at once (the input projection
  in one matrix product; for the Phased LSTM also the time gate of every step),
- ``_step``: one step, which is a function from :mod:`phasedlstm.cells`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phasedlstm import _checks, autotune, fast, paths
from phasedlstm.cells import (
    DEFAULT_LEAK,
    init_batchnorm_,
    init_layernorm_,
    init_time_parameters_,
    init_lstm_,
    leak_in_mode,
    layernorm_input,
    layernorm_step,
    lstm_step,
    peephole_step,
    phased_step,
    time_gate,
)
from phasedlstm.pretrained import Pretrained

__all__ = ["RecurrentLayer", "LSTM", "PeepholeLSTM", "PhasedLSTM", "LayerNormLSTM", "BatchNormLSTM"]

#: "auto": the fused native loop where it can run (CPU, float32/float64, kernels built), else
#: the reference; "reference": always the step-by-step reference; "fast": the fused loop or an error;
#: "scan": the reference's step functions inside torch's scan operator, so that a traced graph keeps
#: one loop whatever the sequence length (ONNX's Scan); "onnx": what the ONNX export uses, a plain or
#: peephole LSTM without projections as one operator that becomes ONNX's own LSTM
#: (:mod:`phasedlstm.paths.onnx_lstm`, no gradients), every other layer as "scan".
IMPLS = ("auto", "reference", "fast", "scan", "onnx")


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` (T, B, ...) within its own length; padding stays put.

    Applying it twice gives ``x`` back, so the same call also un-reverses an output.
    """
    if lengths is None:
        if x.dim() == 2 and x.shape[1] > 1 and x.stride(1) == 0:  # timestamps shared by the batch
            return x[:, :1].flip(0).expand_as(x)
        return x.flip(0)
    T = x.shape[0]
    steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    idx = torch.where(steps < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - steps, steps)  # (T, B)
    idx = idx.view(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(0, idx)


class RecurrentLayer(Pretrained, nn.Module):
    """Base of the sequence layers; see :class:`LSTM` for the arguments, inputs and outputs."""

    #: whether the layer takes ``proj_size`` (torch.nn.LSTM's projections, h_t = W_hr h'_t)
    _projections = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, forget_bias: float = 0.0, gate_bias=None, learn_initial_state: bool = False,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = impl
        _checks.check_sizes(input_size, hidden_size)
        _checks.check_bool("bias", bias)
        _checks.check_int("proj_size", proj_size, 0)
        if proj_size and not self._projections:
            raise ValueError(f"proj_size is supported by LSTM and PeepholeLSTM, not {type(self).__name__}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}")
        self.proj_size = proj_size
        _checks.check_layer_options(num_layers, dropout, bidirectional, batch_first)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.forget_bias = float(forget_bias)
        self.gate_bias = _checks.check_gate_bias(gate_bias, bias, self.forget_bias)
        self.learn_initial_state = learn_initial_state
        fk = {"device": device, "dtype": dtype}
        H, D = hidden_size, 2 if bidirectional else 1
        out_size = proj_size or H  # the size of h and of each direction's output
        # self._names[layer][direction]: {"weight_ih": "weight_ih_l0", ...}
        self._names: list[list[dict[str, str]]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out_size * D
            per_dir = []
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = {}
                for base, shape in self._param_shapes(layer_in).items():
                    names[base] = base + suffix
                    if shape is None:
                        self.register_parameter(base + suffix, None)
                    else:
                        self.register_parameter(base + suffix, nn.Parameter(torch.empty(shape, **fk)))
                per_dir.append(names)
            self._names.append(per_dir)
        if learn_initial_state:
            self.h0 = nn.Parameter(torch.zeros(num_layers * D, out_size, **fk))
            self.c0 = nn.Parameter(torch.zeros(num_layers * D, H, **fk))
        else:
            self.register_parameter("h0", None)
            self.register_parameter("c0", None)
        self.reset_parameters()

    # -- what a subclass defines ---------------------------------------------------------

    def _param_shapes(self, layer_input_size: int) -> dict:
        """Base name -> shape (or None for an absent parameter) of one layer and direction."""
        H, b, P = self.hidden_size, self.bias, self.proj_size
        return {
            "weight_ih": (4 * H, layer_input_size),
            "weight_hh": (4 * H, P or H),
            "bias_ih": (4 * H,) if b else None,
            "bias_hh": (4 * H,) if b else None,
            "weight_hr": (P, H) if P else None,
        }

    def _reset_direction(self, p: dict) -> None:
        """Initialise one layer and direction's parameters (``p``: base name -> Parameter)."""
        init_lstm_([v for v in p.values() if v is not None], p["bias_ih"], p["bias_hh"], self.hidden_size,
                   self.forget_bias, self.gate_bias)

    def _precompute(self, x: Tensor, times: Tensor, p: dict) -> tuple:
        """State-free work of all steps: x (T, B, I), times (T, B) float64 -> tensors (T, B, ...)."""
        return (F.linear(x, p["weight_ih"], p["bias_ih"]),)  # (T, B, 4H)

    def _step(self, pre: tuple, h: Tensor, c: Tensor, p: dict):
        return lstm_step(pre[0], h, c, p["weight_hh"], p["bias_hh"])

    # -- shared machinery ----------------------------------------------------------------

    def reset_parameters(self) -> None:
        for layer in range(self.num_layers):
            for direction in range(len(self._names[layer])):
                self._reset_direction(self.params(layer, direction))
        if self.h0 is not None:
            with torch.no_grad():
                self.h0.zero_()
                self.c0.zero_()

    def params(self, layer: int, direction: int = 0) -> dict:
        """The parameters of one layer and direction, by base name (``weight_ih``, ``period``, ...)."""
        P = self._parameters  # (read directly: nn.Module's attribute lookup costs a one-step call dearly)
        return {base: P[full] for base, full in self._names[layer][direction].items()}

    def _cell(self, pre, h, c, p):
        """One step: the cell's equations, then torch.nn.LSTM's projection h_t = W_hr h'_t if any."""
        h, c = self._step(pre, h, c, p)
        if p.get("weight_hr") is not None:
            h = F.linear(h, p["weight_hr"])
        return h, c

    def _fast_path(self, x: Tensor) -> bool:
        """Whether this call takes the fused native loop (see :mod:`phasedlstm.fast`)."""
        if self.impl == "reference" or torch.jit.is_tracing():  # (torch.jit.trace records the reference's ops)
            return False
        if torch._C._functorch.maybe_current_level() is not None and not _checks.tracing():
            # inside torch.func's vmap / grad / jacrev: the kernels have no batching rules; the reference
            # loop is plain PyTorch, which the transforms handle
            if self.impl == "fast":
                raise RuntimeError("impl='fast' was asked for inside a torch.func transform (vmap, grad, jacrev, "
                                   "...), which the fused kernels do not support: use impl='auto' (the reference "
                                   "loop runs there) or impl='reference'")
            return False
        if self.proj_size:
            if self.impl == "fast":
                raise RuntimeError("impl='fast' was asked for, but the fused kernels have no projections "
                                   "(proj_size > 0): use impl='auto' (the reference loop runs)")
            return False
        ok, why = fast.usable(x)
        if self.impl == "fast" and not ok:
            raise RuntimeError(f"impl='fast' was asked for, but the fused kernels cannot run here: {why}")
        return ok

    def _inference(self, T: int) -> str:
        """How a call without gradients of T steps runs: "sparse" (the inference kernel, only the open
        units), "dense" (the inference kernel, every unit) or "fused" (the fused loop on packed weights,
        faster over many steps)."""
        return "dense" if T == 1 else "fused"

    @property
    def _alpha(self) -> float:
        return 0.0

    def _path(self, steps: paths.Steps, h0: Tensor, c0: Tensor):
        """How this call runs every layer and direction (one of :mod:`phasedlstm.paths`), chosen once."""
        x = steps.x
        if self.impl == "onnx" and self._onnx_lstm and not self.proj_size:
            return paths.onnx_lstm.run
        if self.impl in ("scan", "onnx"):
            return paths.scan.run
        # (a call without gradients does not walk the parameters: what a one-step call costs counts)
        grad = torch.is_grad_enabled() and fast._needs_grad(x, h0, c0, *self._parameters.values())
        own = self._own_path(x, grad)
        if self.impl == "auto" and autotune.enabled() and self._tunable(x):
            return self._tuned(own, steps, h0, c0, grad)
        return own

    def _own_path(self, x: Tensor, grad: bool):
        """The path without measuring: the fused loop, inference for a call without gradients, or the
        reference loop where the kernels cannot run."""
        if not self._fast_path(x):
            return paths.reference.run
        if not _checks.tracing() and self._inference(x.shape[0]) != "fused" and not grad:
            return paths.infer.run
        return paths.fused.run

    #: whether torch's own LSTM computes this layer's equations (a plain LSTM): then it is a candidate path
    _torch_equivalent = False
    #: whether ONNX's LSTM operator computes them (a plain or peephole LSTM): impl "onnx" then uses it
    _onnx_lstm = False

    def _tunable(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not _checks.tracing()
                and not torch.jit.is_tracing() and torch._C._functorch.maybe_current_level() is None)

    def _candidates(self, own) -> dict:
        """The paths that compute this call alike: the kernels with their fixed rule of sharing a step
        among threads (the default) and, with more than one thread, with each way forced (by units, by
        sequences) where they run, else the layer's own path; torch's LSTM for a plain LSTM."""
        if own is paths.fused.run or own is paths.infer.run:
            splits = ("units", "batch") if torch.get_num_threads() > 1 else ()  # (one thread: one way)
            out = {"rule": own, **{split: autotune.with_split(own, split) for split in splits}}
        else:
            out = {"own": own}
        if self._torch_equivalent:
            stack = self.dropout == 0 or not self.training or self.num_layers == 1
            out["torch"] = paths.torch_lstm.run_stack if stack else paths.torch_lstm.run
        return out

    def _tuned(self, own, steps, h0, c0, grad: bool):
        """The fastest candidate path for this call's shape class (measured once per class on a copy
        of the call: :mod:`phasedlstm.autotune`)."""
        candidates = self._candidates(own)
        if len(candidates) == 1:
            return own
        x = steps.x
        key = autotune.shape_class(self, x, steps.lengths, grad)

        def measure(name):
            xs = x.detach().clone().requires_grad_(x.requires_grad)
            trial = steps._replace(x=xs, open_counts=[0, 0])
            wrt = [p for p in self.parameters() if p.requires_grad] + ([xs] if xs.requires_grad else [])

            def call():
                with torch.enable_grad() if grad else torch.no_grad():
                    out, h, c = self._run_layers(trial, h0.detach(), c0.detach(), candidates[name])
                    if grad:
                        torch.autograd.grad(out.sum() + h.sum() + c.sum(), wrt, allow_unused=True)

            return autotune.timer(call)

        return candidates[autotune.choose(key, candidates, measure, default=next(iter(candidates)))]

    # -- what code written for torch.nn.LSTM also calls ------------------------------------

    def flatten_parameters(self) -> None:
        """A no-op, as for torch.nn.LSTM on the CPU: our kernels read the parameters where they are
        (code written for cuDNN calls it after moving a model or loading weights)."""

    @property
    def _flat_weights_names(self) -> list[str]:
        return [full for layer in self._names for names in layer for full in names.values()
                if getattr(self, full) is not None]

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, as torch.nn.LSTM's ``all_weights``
        (``weight_ih, weight_hh, bias_ih, bias_hh``, then this layer's own: peepholes, time or LN
        parameters)."""
        return [[getattr(self, full) for full in names.values() if getattr(self, full) is not None]
                for layer in self._names for names in layer]

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled with torch.jit.script (its forward takes keyword-only "
            f"times and lengths, and the fused path calls native kernels). Use torch.jit.trace, "
            f"torch.export.export or torch.compile instead.")

    def forward(self, input, hx=None, *, times: Tensor | None = None, lengths: Tensor | None = None):
        if lengths is None and not torch.is_grad_enabled() and type(input) is Tensor:
            r = self._forward_stream(input, hx, times)  # one step of a stream: the short path
            if r is not None:
                return r
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return self._forward_packed(input, hx, times, lengths)
        device = input.device.type if isinstance(input, Tensor) else "cpu"
        if torch.is_autocast_enabled(device) and input.is_floating_point():
            return self._forward_autocast(input, hx, times, lengths, device)
        return self._forward(input, hx, times, lengths)

    #: whether _forward_stream serves this layer (LSTM, peephole and Phased LSTM without projections)
    _streamable = True
    #: the fused kernel of this layer: "lstm" (LSTM, peephole and Phased LSTM), "layernorm", or None
    #: (BatchNormLSTM, which has none)
    _kernel = "lstm"
    #: whether the layer has a time gate (and so counts the open unit-steps of sparse inference)
    _has_time_gate = False

    def _forward_stream(self, input, hx, times):
        """One step without gradients, (B, 1, I) or (1, B, I) with hx and that step's timestamp: what a
        model on a live stream calls once per event. The general forward's per-call work (its checks
        as tensor operations, the weights packed for long sequences, the time gate as a separate
        pass) costs more than such a step, so this path checks shapes in Python and leaves the
        values to the inference kernel (paths.infer.stream), which computes the time gate inline and,
        at evaluation, only the open units. It returns None wherever the general forward must run
        instead (any other call, and every input the kernel declines: the general checks then raise
        or warn)."""
        if (not self._streamable or self.impl == "reference" or self.impl == "scan" or input.dim() != 3
                or input.shape[1 if self.batch_first else 0] != 1 or self.proj_size or not fast._state["loaded"]
                or input.device.type != "cpu" or (self.training and self.dropout > 0 and self.num_layers > 1)
                or _checks.tracing() or torch.jit.is_tracing()
                or torch._C._functorch.maybe_current_level() is not None
                or torch.is_autocast_enabled("cpu")):
            return None
        B, H, D = input.shape[0 if self.batch_first else 1], self.hidden_size, 2 if self.bidirectional else 1
        LD = self.num_layers * D
        if input.shape[2] != self.input_size:
            return None
        if hx is None:
            if self.h0 is not None:
                return None
            h0 = c0 = input.new_zeros(LD, B, H)
        else:
            if type(hx) not in (tuple, list) or len(hx) != 2:
                return None
            h0, c0 = hx
            if (type(h0) is not Tensor or type(c0) is not Tensor or h0.shape != (LD, B, H) or c0.shape != (LD, B, H)
                    or h0.device.type != "cpu" or c0.device.type != "cpu"):
                return None
        if times is not None:
            if type(times) is not Tensor or times.device.type != "cpu" or not (
                    times.shape == (B, 1) or times.shape == (1,)) or times.dtype == torch.bool or times.is_complex():
                return None
        x = input if not self.batch_first else input.transpose(0, 1)  # (1, B, I)
        try:
            steps = paths.Steps(x, times, times is None or times.dim() == 1, None, [0, 0])  # (the kernel's forms)
            out, h_n, c_n = self._run_layers(steps, h0, c0, paths.infer.stream)
        except paths.Declined:
            return None
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _run_layers(self, steps: paths.Steps, h0: Tensor, c0: Tensor, run):
        """Every layer and direction of one call by the path ``run``: the backward direction over each
        sequence reversed within its length, dropout between layers in training; the open unit-steps
        of sparse inference counted into ``last_open_fraction`` (a Phased LSTM). -> output
        (T, B, D * H'), h_n, c_n (L * D, B, ...)."""
        if getattr(run, "whole_stack", False):
            return run(self, steps, h0, c0)
        D = 2 if self.bidirectional else 1
        x = steps.x
        LD = self.num_layers * D
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            if layer:
                steps = paths.Steps(x, steps.times, steps.shared, steps.lengths, steps.open_counts)
            for direction in range(D):
                i = layer * D + direction
                p = self.params(layer, direction)
                if direction == 0 or x.shape[0] == 1:  # (one step reads the same forwards and backwards)
                    h, c = (h0, c0) if LD == 1 else (h0[i:i + 1], c0[i:i + 1])
                    out, h, c = run(self, steps, h, c, p)
                else:  # the backward direction starts at each sequence's last valid step
                    lengths = steps.lengths
                    shared = steps.shared and lengths is None  # (reversed within each length: per sequence)
                    back = steps._replace(x=reverse_padded(x, lengths), times=reverse_padded(steps.times, lengths),
                                          shared=shared)
                    out, h, c = run(self, back, h0[i:i + 1], c0[i:i + 1], p)
                    out = reverse_padded(out, lengths)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, dim=2)  # (T, B, D*H)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        if self._has_time_gate:
            computed, valid = steps.open_counts  # (one list for the whole call)
            # a plain attribute, set without nn.Module's __setattr__ (whose checks cost a one-step call dearly)
            object.__setattr__(self, "last_open_fraction", computed / valid if valid else None)
        if LD == 1:
            return x, h_n[0], c_n[0]
        return x, torch.cat(h_n), torch.cat(c_n)

    def _forward_autocast(self, input, hx, times, lengths, device):
        """Under torch.autocast the outputs have autocast's dtype, as torch.nn.LSTM's do; the
        recurrence itself runs in the parameters' precision (a long recurrence in bfloat16 would
        lose the state's precision step by step)."""
        low = torch.get_autocast_dtype(device)
        dtype = self.weight_ih_l0.dtype
        with torch.autocast(device, enabled=False):
            if hx is not None:
                hx = tuple(t.to(dtype) for t in hx)
            out, (h, c) = self._forward(input.to(dtype), hx, times, lengths)
        return out.to(low), (h.to(low), c.to(low))

    def _forward(self, input, hx, times, lengths):
        x, times, shared, lengths, hx, batched = _checks.check_layer_input(self, input, hx, times, lengths)
        B, H = x.shape[1], self.hidden_size
        D = 2 if self.bidirectional else 1
        if hx is not None:
            h0, c0 = hx
        elif self.h0 is not None:
            h0 = self.h0.unsqueeze(1).expand(-1, B, -1)
            c0 = self.c0.unsqueeze(1).expand(-1, B, -1)
        else:
            h0 = x.new_zeros(self.num_layers * D, B, self.proj_size or H)
            c0 = x.new_zeros(self.num_layers * D, B, H)
        steps = paths.Steps(x, times, shared, lengths, [0, 0])
        output, h_n, c_n = self._run_layers(steps, h0, c0, self._path(steps, h0, c0))
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _forward_packed(self, packed, hx, times, lengths):
        """A PackedSequence in, a PackedSequence out, as torch.nn.LSTM: run on the padded batch (in
        the caller's order, with its lengths) and pack the output with the input's own sorting.
        ``times``, if given, is padded (B, T) in the caller's order (or (T,) shared), like the
        result of ``pad_packed_sequence(..., batch_first=True)``; ``hx`` is in the caller's order."""
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence: it carries its own lengths")
        from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

        padded, lens = pad_packed_sequence(packed, batch_first=self.batch_first)
        out, (h_n, c_n) = self(padded, hx, times=times, lengths=lens.to(padded.device))
        order = packed.sorted_indices
        if order is not None:  # the output packed as the input was: sorted by length, by its own order
            out = out.index_select(0 if self.batch_first else 1, order)
            lens = lens[order.cpu()]
        data = pack_padded_sequence(out, lens, batch_first=self.batch_first, enforce_sorted=True)
        return PackedSequence(data.data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "forget_bias": 0.0, "gate_bias": None,
                    "learn_initial_state": False,
                    "impl": "auto"}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


_LAYER_DOC = """
    Args:
        input_size: features of each step of ``input``.
        hidden_size: H, units per layer and direction.
        num_layers: stacked layers (default 1).
        bias: use ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (default True).
        batch_first: input and output are (B, T, *) instead of (T, B, *) (default False).
        dropout: dropout on the output of every layer but the last, in training mode.
        bidirectional: add a backward direction (parameters suffixed ``_reverse``).
        forget_bias: added to the forget-gate part of ``bias_ih_l{k}`` at initialisation
            (default 0, torch.nn.LSTM's initialisation; 1.0 is the usual LSTM trick, and the
            command line's default).
        gate_bias: four numbers (input, forget, cell, output gate): ``bias_ih_l{k}`` starts at
            these constants, one per gate, and ``bias_hh_l{k}`` at zero, instead of the uniform
            initialisation plus ``forget_bias`` (default None). (-0.1, 0, 0, 0) is the Phased
            LSTM authors' initialisation for the frequency tasks.
        learn_initial_state: learn h0 and c0 (parameters ``h0``, ``c0`` of shape
            (num_layers * D, H), zeros at init) used when ``hx`` is None.
        impl: "auto" (default) runs the fused native loop of :mod:`phasedlstm.fast` where it
            can (CPU tensors, float32/float64, kernels compiled) and the reference loop
            otherwise; "reference" always runs the step-by-step reference; "fast" insists;
            "scan" runs the reference steps inside torch's scan (one loop node in a graph);
            "onnx" is what the ONNX export sets (ONNX's LSTM operator for LSTM and PeepholeLSTM).

    Inputs: ``input, hx=None, *, times=None, lengths=None``
        - input: (T, B, I), (B, T, I) if batch_first, or unbatched (T, I); or a PackedSequence
          (the output is then one too, packed like the input; ``times`` is given padded, (B, T)
          in the batch's original order, or (T,)).
        - hx: (h_0, c_0), each (num_layers * D, B, H) or (num_layers * D, H) unbatched;
          zeros (or the learned initial state) if None.
        - times: timestamps (B, T) or (T,) shared by the batch, float32, float64 or int;
          default the step index 0..T-1. Non-decreasing within each sequence's valid
          steps and finite everywhere. Every layer of the stack gets the same timestamps.
        - lengths: (B,) integers in [1, T] for a batch padded at the end. Steps beyond a
          sequence's length leave its state unchanged and give zero output.

    Outputs: ``output, (h_n, c_n)``
        - output: (T, B, D * H), (B, T, D * H) if batch_first, or (T, D * H) unbatched.
        - h_n, c_n: (num_layers * D, B, H), the state at each sequence's last valid step
          (for the backward direction: after its last step, which is step 0).
"""


class LSTM(RecurrentLayer):
    __doc__ = r"""LSTM over sequences, a drop-in for :class:`torch.nn.LSTM`.

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
        c_t &= \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_g) \\
        h_t &= \sigma(a_o) \odot \tanh(c_t)
        \end{aligned}

    Parameters have torch.nn.LSTM's names, shapes and gate order, so a torch.nn.LSTM
    ``state_dict`` loads unchanged and then gives the same outputs and gradients, and the
    default initialisation is torch.nn.LSTM's. ``times`` is accepted
    and checked (so layers can be swapped) but does not enter the equations. ``proj_size > 0``
    adds torch.nn.LSTM's projection h_t = W_hr (o * tanh(c_t)) (``weight_hr_l{k}``, (P, H)); it
    runs on the reference loop.
    """ + _LAYER_DOC

    _projections = True
    _torch_equivalent = True
    _onnx_lstm = True


class PeepholeLSTM(RecurrentLayer):
    __doc__ = r"""Peephole LSTM over sequences (diagonal peepholes, Graves' form).

    .. math::
        \begin{aligned}
        i &= \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f = \sigma(a_f + w_{cf} \odot c_{t-1}) \\
        c_t &= f \odot c_{t-1} + i \odot \tanh(a_g) \\
        h_t &= \sigma(a_o + w_{co} \odot c_t) \odot \tanh(c_t)
        \end{aligned}

    with :math:`a` as in :class:`LSTM`. Peephole weights ``weight_ci_l{k}``,
    ``weight_cf_l{k}``, ``weight_co_l{k}``, each (H,). ``times`` does not enter the equations.
    ``proj_size`` as in :class:`LSTM`. See :class:`phasedlstm.PeepholeLSTMCell`.
    """ + _LAYER_DOC

    _projections = True
    _onnx_lstm = True

    def _param_shapes(self, layer_input_size):
        H = self.hidden_size
        return {**super()._param_shapes(layer_input_size), "weight_ci": (H,), "weight_cf": (H,), "weight_co": (H,)}

    def _step(self, pre, h, c, p):
        return peephole_step(pre[0], h, c, p["weight_hh"], p["bias_hh"], p["weight_ci"], p["weight_cf"],
                             p["weight_co"])


class PhasedLSTM(RecurrentLayer):
    __doc__ = r"""Phased LSTM over sequences with real timestamps (Neil, Pfeiffer & Liu, 2016).

    .. math::
        \begin{aligned}
        \phi_t &= ((t - s) \bmod \tau) / \tau, \qquad
        k_t = \begin{cases} 2\phi_t / r_{on} & \phi_t < r_{on}/2 \\
                            2 - 2\phi_t / r_{on} & \phi_t < r_{on} \\
                            \alpha \phi_t & \text{otherwise} \end{cases} \\
        \tilde c_t &= f \odot c_{t-1} + i \odot g, \qquad
        \tilde h_t = o \odot \tanh(\tilde c_t) \quad
            (\text{peephole LSTM; } o \text{ peeks at } \tilde c_t) \\
        c_t &= k_t \odot \tilde c_t + (1 - k_t) \odot c_{t-1}, \qquad
        h_t = k_t \odot \tilde h_t + (1 - k_t) \odot h_{t-1}
        \end{aligned}

    Time parameters per layer and direction, each (H,), stored as themselves in time units:
    ``period_l{k}`` (tau), ``shift_l{k}`` (s), ``r_on_l{k}``. Initialisation: tau ~ exp(U(a, b))
    with ``period_init=(a, b)`` (default (1, 6)), s ~ U(0, tau) (or U(0, ``shift_init``)), r_on =
    ``r_on`` (default 0.05).
    Keeping them valid: like the authors' code, the gate uses |tau| and |r_on| (bounded below
    by 1e-6, r_on above by 1), so any value an optimiser writes gives a valid gate; the stored
    values are never rewritten behind the user's back.

    The time gate of all steps is computed before the loop (it depends only on t). The phase
    is computed in float64, so it stays exact for timestamps up to ~1e9 (seconds since the
    epoch) — provided they arrive as float64 or int: float32 cannot hold such timestamps, and
    a warning says so. The leak alpha is ``leak`` (default 1e-3) in training mode, 0 in eval.
    For streaming in chunks, pass timestamps that continue (the default restarts at 0).

    Sparse inference: in eval mode (leak 0) and without gradients, the fused path computes at
    each step, for each sequence, only the units whose gate is open; a closed unit keeps h and
    c exactly, as in the equations. ``sparse_inference = False`` computes every unit;
    ``last_open_fraction`` is the fraction of unit-steps the last forward computed (None where
    no step ran sparse). Training mode and anything that needs gradients run every unit.

    Extra args: ``period_init``, ``shift_init``, ``r_on``, ``leak``, ``peepholes`` (default True),
    ``learn_period``, ``learn_shift``, ``learn_r_on`` (default True; False freezes it), ``r_on_max``
    (default 1: the gate uses min(|r_on|, r_on_max), so no optimiser step opens a unit for more than
    that fraction of its period: a bound on the compute of sparse inference).
    """ + _LAYER_DOC

    _has_time_gate = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, period_init=(1.0, 6.0), r_on=0.05, leak=DEFAULT_LEAK, peepholes=True,
                 learn_period=True, learn_shift=True, learn_r_on=True, shift_init=None, r_on_max=1.0, **kwargs):
        _checks.check_time_options(period_init, r_on, leak)
        if isinstance(r_on_max, bool) or not isinstance(r_on_max, (int, float)) or not 0.0 < r_on_max <= 1.0:
            raise ValueError(f"r_on_max must be a number in (0, 1], got {r_on_max!r}")
        #: the gate opens for at most this fraction of a period, whatever r_on an optimiser writes
        self.r_on_max = float(r_on_max)
        if shift_init is not None and not (isinstance(shift_init, (int, float)) and 0 < shift_init < float("inf")):
            raise ValueError(f"shift_init must be None (s ~ U(0, tau)) or a finite number > 0 (s ~ U(0, "
                             f"shift_init)), got {shift_init!r}")
        # set before the base constructor, which creates and initialises the parameters
        self.shift_init = None if shift_init is None else float(shift_init)
        self.period_init = tuple(float(v) for v in period_init)
        self.r_on_init = float(r_on)
        self.leak = float(leak)
        self.peepholes = peepholes
        #: at evaluation (leak 0) without gradients, compute only the units whose time gate is open
        #: (False: every unit, as in training); ``last_open_fraction`` says how many were
        self.sparse_inference = True
        self.last_open_fraction = None
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, **kwargs)
        for layer in range(num_layers):
            for p in (self.params(layer, d) for d in range(len(self._names[layer]))):
                p["period"].requires_grad_(learn_period)
                p["shift"].requires_grad_(learn_shift)
                p["r_on"].requires_grad_(learn_r_on)

    def _param_shapes(self, layer_input_size):
        H = self.hidden_size
        peep = (H,) if self.peepholes else None
        return {**super()._param_shapes(layer_input_size), "weight_ci": peep, "weight_cf": peep,
                "weight_co": peep, "period": (H,), "shift": (H,), "r_on": (H,)}

    def _reset_direction(self, p):
        super()._reset_direction({k: v for k, v in p.items() if k not in ("period", "shift", "r_on")})
        init_time_parameters_(p["period"], p["shift"], p["r_on"], self.period_init, self.r_on_init, self.shift_init)

    @property
    def _alpha(self) -> float:
        """The leak of a closed gate in this mode: ``leak`` in training, 0 at evaluation."""
        return leak_in_mode(self.leak, self.training)

    def _inference(self, T):
        if self.sparse_inference and self._alpha == 0.0:
            return "sparse"
        return super()._inference(T)

    def _time_parameters(self, p):
        """tau, s, r_on of one layer and direction, refused if any is not finite (the gate of a NaN
        period or open ratio is undefined: an error here, rather than NaN outputs later); r_on
        capped at ``r_on_max`` (as the gate caps |r_on| at 1)."""
        params = p["period"], p["shift"], p["r_on"]
        _checks.check_time_parameters(params, self._name_of)
        return params[0], params[1], self._capped(params[2])

    def _capped(self, r_on: Tensor) -> Tensor:
        return r_on if self.r_on_max >= 1.0 else r_on.abs().clamp(max=self.r_on_max)

    def open_ratios(self, layer: int | None = None) -> Tensor:
        """The open ratios the gates use, |r_on| capped at ``r_on_max`` and kept in [1e-6, 1], of every
        direction of one layer (or of every layer); differentiable."""
        layers = range(self.num_layers) if layer is None else (layer,)
        return torch.cat([self._capped(p["r_on"]).abs().clamp(1e-6, 1.0) for k in layers
                          for p in (self.params(k, d) for d in range(len(self._names[k])))])

    def expected_open_fraction(self) -> Tensor:
        """The fraction of unit-steps at which the gates are open, for timestamps uniform over the
        periods: the mean of the open ratios (the compute penalty of ``train``: a proxy of the
        measured fraction)."""
        return self.open_ratios().mean()

    def _name_of(self, param) -> str:
        return next(n for n, q in self.named_parameters() if q is param)

    def _gate(self, times, p):
        return time_gate(times, *self._time_parameters(p), self._alpha)

    def _precompute(self, x, times, p):
        return super()._precompute(x, times, p) + (self._gate(times, p),)  # k: (T, B, H)

    def _step(self, pre, h, c, p):
        return phased_step(pre[0], pre[1], h, c, p["weight_hh"], p["bias_hh"], p["weight_ci"], p["weight_cf"],
                           p["weight_co"])

    def time_gates(self, times: Tensor, layer: int = 0, direction: int = 0) -> Tensor:
        """Openness k_t of one layer's time gates at ``times`` (...) -> (..., H), in this mode."""
        return self._gate(times, self.params(layer, direction))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.period_init != (1.0, 6.0):
            s += f", period_init={self.period_init}"
        if self.r_on_init != 0.05:
            s += f", r_on={self.r_on_init}"
        if self.leak != DEFAULT_LEAK:
            s += f", leak={self.leak}"
        if self.r_on_max < 1.0:
            s += f", r_on_max={self.r_on_max}"
        if not self.peepholes:
            s += ", peepholes=False"
        return s


class _NormalisedLSTM(RecurrentLayer):
    """An LSTM with normalised gate terms and cell state: gains ``{norm}_ih_weight``,
    ``{norm}_hh_weight`` (4H,), ``{norm}_c_weight`` (H,) and the cell shift ``{norm}_c_bias`` (H,)
    beside torch.nn.LSTM's parameters, initialised by ``_init_norm``."""

    _norm = ""

    def _param_shapes(self, layer_input_size):
        H, n = self.hidden_size, self._norm
        return {**super()._param_shapes(layer_input_size), f"{n}_ih_weight": (4 * H,), f"{n}_hh_weight": (4 * H,),
                f"{n}_c_weight": (H,), f"{n}_c_bias": (H,) if self.bias else None}

    def _reset_direction(self, p):
        lstm_names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        super()._reset_direction({k: p[k] for k in lstm_names})
        n = self._norm
        self._init_norm(p[f"{n}_ih_weight"], p[f"{n}_hh_weight"], p[f"{n}_c_weight"], p[f"{n}_c_bias"])


class LayerNormLSTM(_NormalisedLSTM):
    __doc__ = r"""Layer-normalised LSTM over sequences (Ba, Kiros & Hinton, 2016).

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= \mathrm{LN}_{ih}(W_{ih} x_t) + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) \\
        c_t &= \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_g) \\
        h_t &= \sigma(a_o) \odot \tanh(\mathrm{LN}_c(c_t))
        \end{aligned}

    Each normalisation has its own gain and shift: gains ``ln_ih_weight_l{k}``,
    ``ln_hh_weight_l{k}`` (4H,) with shifts ``bias_ih_l{k}``, ``bias_hh_l{k}``, and
    ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}`` (H,). The normalised input term of all steps is
    computed before the loop. See :class:`phasedlstm.LayerNormLSTMCell`.
    """ + _LAYER_DOC

    _streamable = False  # (its own fused loop, ln_forward, serves every call)
    _kernel = "layernorm"

    _norm = "ln"
    _init_norm = staticmethod(init_layernorm_)

    def _precompute(self, x, times, p):
        return (layernorm_input(x, p["weight_ih"], p["ln_ih_weight"], p["bias_ih"]),)  # (T, B, 4H)

    def _step(self, pre, h, c, p):
        return layernorm_step(pre[0], h, c, p["weight_hh"], p["ln_hh_weight"], p["bias_hh"], p["ln_c_weight"],
                              p["ln_c_bias"])


class BatchNormLSTM(_NormalisedLSTM):
    __doc__ = r"""Batch-normalised LSTM over sequences (Cooijmans et al., Recurrent Batch Normalization, 2016).

    .. math::
        \begin{aligned}
        [a_i, a_f, a_g, a_o] &= \mathrm{BN}_{ih}(W_{ih} x_t; t) + b_{ih}
                                + \mathrm{BN}_{hh}(W_{hh} h_{t-1}; t) + b_{hh} \\
        c_t &= \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_g) \\
        h_t &= \sigma(a_o) \odot \tanh(\mathrm{BN}_c(c_t; t))
        \end{aligned}

    where :math:`\mathrm{BN}(z; t) = \gamma (z - \mu_t) / \sqrt{\sigma_t^2 + \epsilon}` (plus
    :math:`\beta` for the cell state) normalises each feature over the batch with statistics kept
    separately for every time step t: in training the batch's own, over the sequences still running
    at step t; at evaluation the population statistics gathered in training (running averages,
    momentum 0.1), those of step ``max_length - 1`` for every later step (the paper's rule for
    sequences longer than the training ones). The step index counts from the start of each call.

    Parameters: torch.nn.LSTM's ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (the biases replace the normalisations' own shifts, which would duplicate
    them); gains ``bn_ih_weight_l{k}``, ``bn_hh_weight_l{k}`` (4H,) and ``bn_c_weight_l{k}`` (H,),
    initialised to 0.1 as the paper does, and the cell shift ``bn_c_bias_l{k}`` (H,), 0. Buffers:
    ``bn_ih_mean_l{k}``, ``bn_ih_var_l{k}``, ``bn_hh_mean_l{k}``, ``bn_hh_var_l{k}``
    (max_length, 4H), ``bn_c_mean_l{k}``, ``bn_c_var_l{k}`` (max_length, H).

    On the CPU in float32 and float64 it runs a fused native loop with a hand-written backward (the
    three normalisations inside it); elsewhere, with ``impl="reference"``
    and under torch.compile / torch.export, the reference loop (plain PyTorch, any device and dtype,
    any derivative). ``impl`` "scan" and "onnx" are refused. Training mode needs at least two
    sequences per batch for its statistics to mean anything, as batch normalisation does.

    Extra args: ``max_length`` (default 1000): the time steps with their own statistics.
    """ + _LAYER_DOC

    _streamable = False
    _kernel = None
    _norm = "bn"
    _init_norm = staticmethod(init_batchnorm_)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, max_length=1000, **kwargs):
        _checks.check_int("max_length", max_length, 1)
        if kwargs.get("impl", "auto") in ("scan", "onnx"):
            raise ValueError(f"BatchNormLSTM has no scan or ONNX form: impl must be 'auto', 'fast' or 'reference', "
                             f"got {kwargs['impl']!r}")
        self.max_length = max_length
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, **kwargs)
        H = hidden_size
        fk = {"device": self.weight_ih_l0.device, "dtype": self.weight_ih_l0.dtype}
        #: self._buffer_names[layer][direction]: {"bn_ih_mean": "bn_ih_mean_l0", ...}, suffixed as the
        #: parameters of that layer and direction are
        self._buffer_names = []
        for per_dir in self._names:
            self._buffer_names.append([])
            for names in per_dir:
                suffix = names["weight_ih"].removeprefix("weight_ih")
                buffers = {}
                for base, width in (("bn_ih", 4 * H), ("bn_hh", 4 * H), ("bn_c", H)):
                    for stat, init in (("_mean", torch.zeros), ("_var", torch.ones)):
                        buffers[base + stat] = base + stat + suffix
                        self.register_buffer(base + stat + suffix, init(max_length, width, **fk))
                self._buffer_names[-1].append(buffers)

    def reset_running_stats(self) -> None:
        """Forget the population statistics (means 0, variances 1), as torch.nn.BatchNorm1d's method."""
        for per_dir in self._buffer_names:
            for buffers in per_dir:
                for base, full in buffers.items():
                    self._buffers[full].fill_(0.0 if base.endswith("_mean") else 1.0)

    def params(self, layer, direction=0):
        """The parameters of one layer and direction by base name, with its statistics buffers."""
        out = super().params(layer, direction)
        if hasattr(self, "_buffer_names"):  # (the base constructor initialises before the buffers exist)
            B = self._buffers
            out.update({base: B[full] for base, full in self._buffer_names[layer][direction].items()})
        return out

    def _path(self, steps, h0, c0):
        if _checks.tracing() or not self._fast_path(steps.x):  # (no graph form of its kernel)
            return paths.batchnorm.run
        return paths.batchnorm.run_fused

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.max_length != 1000:
            s += f", max_length={self.max_length}"
        return s
