"""The experiment model (as in the lecture) and its losses.

    x (B, T, I) -> Linear(I, P) -> recurrent layer (B, T, H) -> pooling (B, H) -> Linear(H, C)

Pooling is the mean over each sequence's valid steps (the lecture) or its last valid
step (the paper). The classification loss is the cross entropy written out from its
equation; a regression head (C = 1, mean squared error) serves the adding problem.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from phasedlstm.layers import LSTM, BatchNormLSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM
from phasedlstm.pretrained import Pretrained

#: model name -> recurrent layer class; "torch-lstm" is the baseline torch.nn.LSTM
MODELS = {
    "lstm": LSTM,
    "peephole": PeepholeLSTM,
    "phased": PhasedLSTM,
    "layernorm": LayerNormLSTM,
    "batchnorm": BatchNormLSTM,
    "torch-lstm": nn.LSTM,
}
POOLING = ("last", "mean")


def log_softmax(z: Tensor) -> Tensor:
    """log softmax(z)_c = z_c - log sum_k exp(z_k), with the max subtracted for stability."""
    m = z.max(dim=-1, keepdim=True).values.detach()
    return z - m - torch.log(torch.exp(z - m).sum(dim=-1, keepdim=True))


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of -log softmax(logits)[target] (equals F.cross_entropy)."""
    return -log_softmax(logits).gather(1, target.unsqueeze(1)).mean()


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return ((pred - target) ** 2).mean()


class SequenceModel(Pretrained, nn.Module):
    """Projection, recurrent layer, pooling over valid steps, readout.

    Args:
        model: one of :data:`MODELS`.
        input_size, hidden_size, num_layers: of the recurrent layer.
        output_size: classes, or 1 for regression.
        proj_size: size of the input projection (0: none; the layer sees x itself).
        pooling: "last" (the last valid step) or "mean" (the mean over valid steps).
        dropout: between recurrent layers.
        time_scale: timestamps are divided by this before the recurrent layer, so that its time
            parameters count in this unit (:func:`phasedlstm.timescale.auto_time_init` measures it).
        embedding: if > 0, the first input feature is an index in [0, embedding) (an event's address),
            looked up in a learned table of ``proj_size`` columns instead of projected; the other
            features (a time feature) are appended to it.
        rnn_kwargs: passed to the recurrent layer (e.g. period_init, r_on for "phased");
            ``forget_bias`` defaults to 1.0 here (0 in the layers) unless ``gate_bias`` is given.
    """

    def __init__(self, model: str, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1,
                 proj_size: int = 64, pooling: str = "last", dropout: float = 0.0, time_scale: float = 1.0,
                 embedding: int = 0, **rnn_kwargs):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if model == "torch-lstm" and rnn_kwargs:
            raise ValueError(f"torch-lstm takes none of {sorted(rnn_kwargs)}")
        if not (isinstance(time_scale, (int, float)) and 0 < time_scale < float("inf")):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        self.model_name = model
        self.pooling = pooling
        self.time_scale = float(time_scale)
        if embedding and proj_size < 1:
            raise ValueError(f"an embedding needs proj_size > 0 (its width), got {proj_size}")
        self.embedding = int(embedding)
        if embedding:
            self.proj = nn.Embedding(embedding, proj_size)
            rnn_in = proj_size + input_size - 1
        else:
            self.proj = nn.Linear(input_size, proj_size) if proj_size > 0 else nn.Identity()
            rnn_in = proj_size if proj_size > 0 else input_size
        if model != "torch-lstm" and "gate_bias" not in rnn_kwargs:
            rnn_kwargs.setdefault("forget_bias", 1.0)  # the experiments' init: +1 on the forget gate
        self.rnn = MODELS[model](rnn_in, hidden_size, num_layers, batch_first=True, dropout=dropout, **rnn_kwargs)
        self.head = nn.Linear(hidden_size, output_size)

    def inputs(self, x: Tensor) -> Tensor:
        """What the recurrent layer reads: x projected, or its first feature embedded (padding is
        index 0, masked by the lengths) with the other features appended."""
        if not self.embedding:
            return self.proj(x)
        z = self.proj(x[..., 0].long())
        return torch.cat([z, x[..., 1:]], dim=-1) if x.shape[-1] > 1 else z

    def features(self, x: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        """The recurrent layer's outputs (B, T, H), zero past each sequence's end."""
        z = self.inputs(x)
        if isinstance(self.rnn, nn.LSTM):  # the torch baseline takes lengths as a packed sequence
            T = z.shape[1]
            packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
            return out
        if self.time_scale != 1.0:
            times = times / self.time_scale
        out, _ = self.rnn(z, times=times, lengths=lengths)
        return out

    def forward(self, x: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        out = self.features(x, times, lengths)  # (B, T, H)
        if self.pooling == "last":
            pooled = out[torch.arange(out.shape[0], device=out.device), lengths - 1]  # (B, H)
        else:
            pooled = out.sum(1) / lengths.unsqueeze(1).to(out.dtype)  # padding is zero
        return self.head(pooled)

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        if output.shape[1] == 1 and y.is_floating_point():
            return mse(output.squeeze(1), y)
        return cross_entropy(output, y)

