"""Re-score the committed sequential-MNIST-by-rows models without this library's data code or layers.

The MNIST test set is read straight from its IDX files (numpy and struct), scaled with the
training images' range as the task does ((x - min) / (max - min) over the training split,
which for MNIST is 0 and 255), and each model's forward pass is written here from its
equations in plain torch: the LSTM is torch.nn.LSTM loaded with the run's weights (same names
and gate order), the Phased LSTM is its equations (peepholes, time gate at t = 0, 1, ..., 27,
no leak at evaluation), the LN-LSTM too (layer norms of the input and recurrent terms and of
the cell, any number of layers; dropout between layers is off at evaluation). Mean or last-step
pooling, as the run's config says. Only the checkpoint file is read with torch.load.

Usage: python scripts/check_rows_models.py [--mnist DIR] [RUN ...]
(default DIR: $PHASEDLSTM_DATA/mnist or ~/.cache/phasedlstm/mnist, where `phasedlstm data
fetch mnist` puts it; default runs: the rows models of results/models). Prints each model's accuracy
beside the one its checkpoint recorded at the chosen epoch; exits 1 if any differs by more
than one image in 10,000.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

RUNS = ["results/models/smnist-rows-lstm-seed0", "results/models/smnist-rows-phased-seed2",
        "results/models/smnist-rows-last-lstm-seed1", "results/models/smnist-rows-ln2-seed1"]


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def lstm_features(sd: dict, z: torch.Tensor) -> torch.Tensor:
    H = sd["rnn.weight_hh_l0"].shape[1]
    rnn = torch.nn.LSTM(z.shape[2], H, batch_first=True).double()
    rnn.load_state_dict({k[4:]: v.double() for k, v in sd.items() if k.startswith("rnn.")})
    return rnn(z)[0]


def phased_features(sd: dict, z: torch.Tensor) -> torch.Tensor:
    g = {k[4:-3]: v.double() for k, v in sd.items() if k.startswith("rnn.")}  # weight_ih, period, ...
    B, T, _ = z.shape
    H = g["weight_hh"].shape[1]
    tau = g["period"].abs().clamp_min(1e-6)
    r = g["r_on"].abs().clamp(1e-6, 1.0)
    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    out = []
    for t in range(T):
        phi = torch.remainder(t - g["shift"], tau) / tau
        k = torch.where(phi < r / 2, 2 * phi / r, torch.where(phi < r, 2 - 2 * phi / r, torch.zeros_like(phi)))
        a = z[:, t] @ g["weight_ih"].T + g["bias_ih"] + h @ g["weight_hh"].T + g["bias_hh"]
        ai, af, ag, ao = a.chunk(4, 1)
        i = torch.sigmoid(ai + g["weight_ci"] * c)
        f = torch.sigmoid(af + g["weight_cf"] * c)
        c_new = f * c + i * torch.tanh(ag)
        o = torch.sigmoid(ao + g["weight_co"] * c_new)
        h_new = o * torch.tanh(c_new)
        c = k * c_new + (1 - k) * c
        h = k * h_new + (1 - k) * h
        out.append(h)
    return torch.stack(out, 1)


def layer_norm(z: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)  # (biased)
    return (z - mu) / torch.sqrt(var + 1e-5) * gain + shift


def layernorm_features(sd: dict, z: torch.Tensor, layers: int) -> torch.Tensor:
    for layer in range(layers):
        g = {k[4:-3]: v.double() for k, v in sd.items() if k.startswith("rnn.") and k.endswith(f"_l{layer}")}
        B, T, _ = z.shape
        H = g["weight_hh"].shape[1]
        h = torch.zeros(B, H, dtype=torch.float64)
        c = torch.zeros(B, H, dtype=torch.float64)
        out = []
        for t in range(T):
            a = (layer_norm(z[:, t] @ g["weight_ih"].T, g["ln_ih_weight"], g["bias_ih"])
                 + layer_norm(h @ g["weight_hh"].T, g["ln_hh_weight"], g["bias_hh"]))
            ai, af, ag, ao = a.chunk(4, 1)
            c = torch.sigmoid(af) * c + torch.sigmoid(ai) * torch.tanh(ag)
            h = torch.sigmoid(ao) * torch.tanh(layer_norm(c, g["ln_c_weight"], g["ln_c_bias"]))
            out.append(h)
        z = torch.stack(out, 1)
    return z


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("PHASEDLSTM_DATA", Path.home() / ".cache" / "phasedlstm")) / "mnist"
    ap.add_argument("--mnist", type=Path, default=default)
    ap.add_argument("runs", nargs="*", default=RUNS)
    a = ap.parse_args()
    train = read_idx(a.mnist / "train-images-idx3-ubyte")
    lo, hi = float(train.min()), float(train.max())
    x = (read_idx(a.mnist / "t10k-images-idx3-ubyte").astype(np.float64) - lo) / (hi - lo)  # (10000, 28, 28)
    y = torch.from_numpy(read_idx(a.mnist / "t10k-labels-idx1-ubyte").astype(np.int64))
    x = torch.from_numpy(x)
    bad = 0
    for run in a.runs:
        ck = torch.load(Path(run) / "best.pt", map_location="cpu", weights_only=False)
        cfg, sd = ck["config"], ck["model"]
        if cfg["task"] != "smnist-rows" or cfg.get("task_options", {}).get("classes"):
            raise SystemExit(f"{run}: not a ten-class rows model")
        if cfg["pooling"] not in ("mean", "last") or cfg.get("proj_size", 64) <= 0:
            raise SystemExit(f"{run}: pooling {cfg['pooling']!r}, projection {cfg.get('proj_size')}: not checked here")
        layers = cfg.get("layers", 1)
        if cfg["model"] not in ("lstm", "torch-lstm", "phased", "layernorm") or (
                layers != 1 and cfg["model"] != "layernorm"):
            raise SystemExit(f"{run}: this check has the equations of a one-layer LSTM and Phased LSTM and of "
                             f"the LN-LSTM only, not of a {layers}-layer {cfg['model']}")
        features = {"lstm": lstm_features, "torch-lstm": lstm_features, "phased": phased_features,
                    "layernorm": lambda sd, z: layernorm_features(sd, z, layers)}[cfg["model"]]
        with torch.no_grad():
            correct = 0
            for s in range(0, len(x), 1000):
                z = x[s:s + 1000] @ sd["proj.weight"].double().T + sd["proj.bias"].double()
                feats = features(sd, z)
                pooled = feats.mean(1) if cfg["pooling"] == "mean" else feats[:, -1]  # (all rows: 28 steps)
                logits = pooled @ sd["head.weight"].double().T + sd["head.bias"].double()
                correct += int((logits.argmax(1) == y[s:s + 1000]).sum())
        acc = correct / len(y)
        rec = next(h["test_acc"] for h in ck["history"] if h["epoch"] == ck["epoch"])
        ok = abs(acc - rec) <= 1e-4
        bad += not ok
        print(f"{run}: {cfg['model']}, epoch {ck['epoch']}: test accuracy {acc:.4f} read independently, "
              f"{rec:.4f} recorded by the run {'(equal)' if ok else '(DIFFERENT)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
