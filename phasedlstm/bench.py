"""``phasedlstm bench``: our layers against torch.nn.LSTM and the GEMM-only bound, in one process.

For each shape (B, T, I, H) it times, interleaved (one call of each in turn, repeated), after
warm-up, and reports the median of ``--repeats``:

- ``train``: forward + backward of one layer (gradients to all parameters and the input);
- ``infer``: forward only, under ``torch.no_grad()``;

for torch.nn.LSTM, each of our four layers (the path ``impl="auto"`` chooses; add
``--reference`` for the reference loops too), and the GEMM-only bound: the matrix products
any LSTM must do at that shape (one input projection for all steps, one recurrent product per
step, and for training their backward products), timed with ``torch.mm`` on ready buffers.

Memory, at the T = 784 shape: the peak memory of one training step (the rise of the peak
resident set size, VmHWM, over the memory held before the step, in a fresh process per layer;
Linux), and the bytes each layer saves for backward (every tensor autograd keeps, counted once
per storage) — the activation memory that dominates that peak.

Writes a table to stdout and JSON (``--json``, with torch version, threads and CPU model).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

SHAPES = [(128, 28, 28, 128), (64, 784, 1, 128), (32, 1000, 1, 110), (256, 100, 32, 256)]
LAYERS = ["lstm", "peephole", "phased", "layernorm"]
MEMORY_SHAPE = (64, 784, 1, 128)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", default=None, help="B,T,I,H;B,T,I,H;... (default: the four of the README table: 128,28,28,128;64,784,1,128;32,1000,1,110;256,100,32,256)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats, median reported (default: 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--layers", default=",".join(LAYERS), help=f"(default: {','.join(LAYERS)})")
    p.add_argument("--reference", action="store_true", help="also time the reference loops")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--json", default=None, help="write results here")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _make(name: str, I: int, H: int, impl: str):
    from phasedlstm import layers

    if name == "torch":
        return torch.nn.LSTM(I, H)
    cls = {"lstm": layers.LSTM, "peephole": layers.PeepholeLSTM, "phased": layers.PhasedLSTM,
           "layernorm": layers.LayerNormLSTM}[name]
    return cls(I, H, impl=impl)


class _Case:
    """One layer at one shape: callables for a training step and an inference call."""

    def __init__(self, label, module, x, times):
        self.label, self.m, self.x, self.times = label, module, x, times
        self.is_torch = isinstance(module, torch.nn.LSTM)
        with torch.no_grad():
            out = self._fwd()[0]
        self.grad = torch.randn_like(out)

    def _fwd(self):
        if self.is_torch:
            return self.m(self.x)
        return self.m(self.x, times=self.times)

    def train_step(self):
        self.m.zero_grad(set_to_none=True)
        self.x.grad = None
        out, _ = self._fwd()
        out.backward(self.grad)

    def infer(self):
        with torch.no_grad():
            self._fwd()


class _Bound:
    """The GEMMs any LSTM does at (B, T, I, H), on preallocated buffers."""

    label = "GEMM bound"

    def __init__(self, B, T, I, H):
        self.T = T
        self.X = torch.randn(T * B, I)
        self.W_ih = torch.randn(4 * H, I)
        self.W_hh = torch.randn(4 * H, H)
        self.h = torch.randn(B, H)
        self.G = torch.empty(T * B, 4 * H)
        self.g = torch.empty(B, 4 * H)
        self.dG = torch.randn(T * B, 4 * H)
        self.Hs = torch.randn(T * B, H)
        self.dX = torch.empty(T * B, I)
        self.dh = torch.empty(B, H)
        self.dW_ih = torch.empty(4 * H, I)
        self.dW_hh = torch.empty(4 * H, H)

    def infer(self):
        torch.mm(self.X, self.W_ih.t(), out=self.G)
        for t in range(self.T):
            torch.mm(self.h, self.W_hh.t(), out=self.g)

    def train_step(self):
        self.infer()
        dg = self.dG[: self.g.shape[0]]
        for t in range(self.T):
            torch.mm(dg, self.W_hh, out=self.dh)
        torch.mm(self.dG.t(), self.Hs, out=self.dW_hh)
        torch.mm(self.dG.t(), self.X, out=self.dW_ih)
        torch.mm(self.dG, self.W_ih, out=self.dX)


def _median_ms(cases, fn_name, repeats, warmup) -> dict[str, float]:
    times = {c.label: [] for c in cases}
    for _ in range(warmup):
        for c in cases:
            getattr(c, fn_name)()
    for _ in range(repeats):
        for c in cases:  # interleaved: drift hits every case alike
            t0 = time.perf_counter()
            getattr(c, fn_name)()
            times[c.label].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(case: _Case) -> int:
    """Bytes autograd keeps for backward during one training step (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except RuntimeError:
            pass
        return t

    case.m.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = case._fwd()
    out.backward(case.grad)
    return sum(storages.values())


_PEAK_SCRIPT = """
import sys, torch
from phasedlstm import bench, fast
torch.set_num_threads(int(sys.argv[2]))
fast.load()
B, T, I, H = bench.MEMORY_SHAPE
torch.manual_seed(0)
x = torch.randn(T, B, I, requires_grad=True)
m = bench._make(sys.argv[1], I, H, "auto")
grad = torch.randn(T, B, H)
def status(key):  # kB -> bytes
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
try:  # reset the peak (VmHWM) to the current RSS, so that only the step counts
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
out, _ = m(x) if isinstance(m, torch.nn.LSTM) else m(x, times=torch.arange(T, dtype=torch.float64))
out.backward(grad)
print(max(0, status("VmHWM") - before))
"""


def peak_step_bytes(name: str, threads: int) -> int | None:
    """Peak RSS rise of one training step of layer ``name`` at MEMORY_SHAPE, in a fresh process."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, name, str(threads)], capture_output=True, text=True,
                       timeout=600)
    try:
        return int(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def run(shapes, layers, threads=2, repeats=7, warmup=2, reference=False, memory=True, log=print) -> dict:
    from phasedlstm import fast

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fast_ok = fast.available()
    config = {"torch": torch.__version__, "threads": threads, "cpu": cpu_model(), "python": platform.python_version(),
              "repeats": repeats, "warmup": warmup, "fused_kernels": fast_ok,
              "fused_kernels_error": None if fast_ok else fast.unavailable_reason(),
              "date": time.strftime("%Y-%m-%d")}
    results = []
    for (B, T, I, H) in shapes:
        x = torch.randn(T, B, I, requires_grad=True)
        times = torch.arange(T, dtype=torch.float64)
        cases = [_Case("torch.nn.LSTM", _make("torch", I, H, "auto"), x, times)]
        for name in layers:
            cases.append(_Case(name, _make(name, I, H, "auto"), x, times))
            if reference:
                cases.append(_Case(name + " (reference)", _make(name, I, H, "reference"), x, times))
        cases.append(_Bound(B, T, I, H))
        row = {"shape": [B, T, I, H]}
        for mode, fn in (("train", "train_step"), ("infer", "infer")):
            row[mode] = _median_ms(cases, fn, repeats, warmup)
        results.append(row)
        log(format_shape(row))
    mem = None
    if memory:
        B, T, I, H = MEMORY_SHAPE
        x = torch.randn(T, B, I, requires_grad=True)
        times = torch.arange(T, dtype=torch.float64)
        mem = {"shape": list(MEMORY_SHAPE), "saved": {}, "peak": {}}
        for label, name in [("torch.nn.LSTM", "torch")] + [(n, n) for n in layers]:
            mem["saved"][label] = saved_bytes(_Case(label, _make(name, I, H, "auto"), x, times))
            mem["peak"][label] = peak_step_bytes(name, threads)
        log(format_memory(mem))
    return {"config": config, "results": results, "memory": mem}


def format_shape(row) -> str:
    B, T, I, H = row["shape"]
    base_t, base_i = row["train"]["torch.nn.LSTM"], row["infer"]["torch.nn.LSTM"]
    bound_t, bound_i = row["train"]["GEMM bound"], row["infer"]["GEMM bound"]
    lines = [f"\nB={B} T={T} I={I} H={H}   (median ms; ratio to torch.nn.LSTM / to the GEMM bound)",
             f"  {'layer':24s} {'train ms':>9s} {'x torch':>8s} {'x bound':>8s}   {'infer ms':>9s} {'x torch':>8s} "
             f"{'x bound':>8s}"]
    for label in row["train"]:
        t, i = row["train"][label], row["infer"][label]
        lines.append(f"  {label:24s} {t:9.1f} {t / base_t:8.2f} {t / bound_t:8.2f}   {i:9.1f} {i / base_i:8.2f} "
                     f"{i / bound_i:8.2f}")
    return "\n".join(lines)


def format_memory(mem) -> str:
    B, T, I, H = mem["shape"]
    lines = [f"\nmemory of one training step at B={B} T={T} I={I} H={H}:",
             f"  {'layer':24s} {'peak MiB':>9s} {'x torch':>8s}   {'saved MiB':>9s} {'x torch':>8s}"]
    pb, sb = mem["peak"]["torch.nn.LSTM"], mem["saved"]["torch.nn.LSTM"]
    for k, saved in mem["saved"].items():
        peak = mem["peak"][k]
        p = f"{peak / 2**20:9.1f} {peak / pb:8.2f}" if peak and pb else f"{'n/a':>9s} {'':>8s}"
        lines.append(f"  {k:24s} {p}   {saved / 2**20:9.1f} {saved / sb:8.2f}")
    return "\n".join(lines)


def parse_shapes(s):
    if not s:
        return SHAPES
    try:
        return [tuple(int(v) for v in part.split(",")) for part in s.split(";") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: --shapes wants B,T,I,H;B,T,I,H;..., got {s!r}") from None


def main(args) -> int:
    layers = [v for v in args.layers.split(",") if v]
    unknown = sorted(set(layers) - set(LAYERS))
    if unknown:
        raise SystemExit(f"error: unknown layers {unknown}; choose from {LAYERS}")
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_model()}", flush=True)
    out = run(parse_shapes(args.shapes), layers, args.threads, args.repeats, args.warmup, args.reference,
              not args.no_memory, log=lambda s: print(s, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
