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

Inference of the Phased LSTM (``--no-sparse`` skips it): dense (``sparse_inference = False``:
every unit computed, the fused loop) against sparse (only the units whose time gate is open) in
eval mode without gradients, with the measured fraction of open unit-steps, at H in {128, 256,
512}, T = 1000, B in {1, 32}, timestamps shared by the batch or per sample (irregular: gaps
drawn from an exponential of mean 1, the periods' unit), r_on in {0.05, 0.2}; and on a trained
model (``--run RUN``, default ``results/models/freq-async-phased-seed0`` where it exists): its
whole forward over its task's test split.

Streaming (``--no-stream`` skips it): the per-call latency of one step, B = 1, input (1, 1, I)
with the carried (h, c) and that step's timestamp, under ``torch.no_grad()``, at H in {64,
128, 256}, for torch.nn.LSTM and our LSTM, peephole LSTM and Phased LSTM (eval mode), and
``phasedlstm.Stream.push``.

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

#: B, T, I, H[, flags]: "ps" gives the Phased LSTM per-sample irregular timestamps (every other
#: layer ignores times), "2bi" makes every layer a 2-layer bidirectional stack
SHAPES = [(128, 28, 28, 128), (128, 28, 28, 128, "ps"), (64, 784, 1, 128), (32, 1000, 1, 110),
          (32, 1000, 1, 110, "ps"), (256, 100, 32, 256), (32, 100, 32, 512), (16, 100, 32, 1024),
          (64, 100, 32, 128, "2bi")]
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
    p.add_argument("--no-shapes", action="store_true", help="skip the training / forward table")
    p.add_argument("--sparse-hidden", default="128,256,512", help="H of the sparse section (default: 128,256,512)")
    p.add_argument("--sparse-steps", type=int, default=1000, help="T of the sparse section (default: 1000)")
    p.add_argument("--stream-hidden", default="64,128,256", help="H of the streaming section (default: 64,128,256)")
    p.add_argument("--no-sparse", action="store_true", help="skip the Phased LSTM's sparse inference")
    p.add_argument("--no-stream", action="store_true", help="skip the one-step streaming latency")
    p.add_argument("--run", default=None, help="a trained Phased LSTM run folder for the sparse section (default: "
                   "results/models/freq-async-phased-seed0 where it exists; 'none' to skip)")
    p.add_argument("--json", default=None, help="write results here")
    g = p.add_argument_group("shape grid (--grid: instead of the sections above)")
    g.add_argument("--grid", action="store_true", help="every layer against torch.nn.LSTM at shapes drawn from a grid "
                   "(phasedlstm/bench_grid.py says which)")
    g.add_argument("--grid-points", type=int, default=36, help="points drawn from the grid (default: 36)")
    g.add_argument("--grid-seed", type=int, default=0, help="(default: 0)")
    g.add_argument("--grid-max-gflop", type=float, default=2.0,
                   help="draw only shapes whose forward does at most this many GFLOP of products (default: 2)")
    g.add_argument("--grid-plot", default=None, help="write the heat map (PNG) here")
    d = p.add_argument_group("deployment (--deploy: instead of the sections above)")
    d.add_argument("--deploy", action="store_true", help="ONNX Runtime against eager PyTorch on the frequency task's "
                   "model, each layer (phasedlstm/bench_deploy.py; needs the export extra)")
    d.add_argument("--deploy-batches", default="1,32", help="(default: 1,32)")
    d.add_argument("--deploy-steps", type=int, default=100, help="T (default: 100)")
    e = p.add_argument_group("event streams (--events RUN: instead of the sections above)")
    e.add_argument("--events", metavar="RUN", default=None,
                   help="events per second of a trained Phased LSTM event model (nmnist-sim) on one stream, in chunks "
                        "and one event per Stream.push, sparse against dense (phasedlstm/bench_events.py)")
    e.add_argument("--events-samples", type=int, default=20, help="test samples fed (default: 20)")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _make(name: str, I: int, H: int, impl: str, stack: bool = False, num_layers: int = 1):
    """Layer ``name`` ("torch": torch.nn.LSTM); ``stack``: 2 layers, bidirectional."""
    from phasedlstm import layers

    kw = {"num_layers": 2, "bidirectional": True} if stack else {"num_layers": num_layers}
    if name == "torch":
        return torch.nn.LSTM(I, H, **kw)
    cls = {"lstm": layers.LSTM, "peephole": layers.PeepholeLSTM, "phased": layers.PhasedLSTM,
           "layernorm": layers.LayerNormLSTM}[name]
    return cls(I, H, impl=impl, **kw)


def forward_flops(B, T, I, H, stack=False) -> float:
    """Multiply-adds x 2 of the matrix products of one forward (the element-wise work is not
    counted); a training step does about three times as many (forward, dX / dh, dW)."""
    if not stack:
        return 2.0 * T * B * 4 * H * (I + H)
    return 2 * (2.0 * T * B * 4 * H * (I + H)) + 2 * (2.0 * T * B * 4 * H * (2 * H + H))


def peak_gflops(threads: int) -> float:
    """The machine's reference rate: torch.mm of 1024 x 1024 float32 matrices on one thread (its
    best of 5), times the threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    c = torch.empty(1024, 1024)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * 1024**3 / best / 1e9 * threads


#: (M, K, N) of the micro-kernel's rate: 96 rows (16 tiles of 6), weights of 512 KiB (in a core's L2)
MICRO_SHAPE = (96, 256, 512)


def micro_kernel_gflops(threads: int) -> float:
    """The fused kernels' register-blocked micro-kernel alone (float32, AVX2 or AVX-512) on one
    thread, best of 20 calls, times the threads: the rate the layers' products could reach.
    0 where the CPU has no micro-kernel."""
    from phasedlstm import fast

    fast.load()
    return float(torch.ops.phasedlstm_testing.micro_kernel_gflops(*MICRO_SHAPE, 20)) * threads


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

    out, _ = case._fwd()  # first: the autotuner measures its candidates at a shape's first call,
    out.backward(case.grad)  # and their saved tensors are not this step's
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


def run(shapes, layers, threads=2, repeats=7, warmup=2, reference=False, memory=True, log=print, sparse=False,
        stream=False, run_dir=None) -> dict:
    from phasedlstm import fast

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fast_ok = fast.load()
    config = {"torch": torch.__version__, "threads": threads, "cpu": cpu_model(), "python": platform.python_version(),
              "repeats": repeats, "warmup": warmup, "fused_kernels": fast_ok,
              "fused_kernels_error": None if fast_ok else fast.unavailable_reason(),
              "date": time.strftime("%Y-%m-%d")}
    results = []
    if shapes:
        config["mm_gflops"] = peak_gflops(threads)
        config["micro_kernel_gflops"] = micro_kernel_gflops(threads) if fast_ok else 0.0
        # the peak the layers' rates are quoted against: the micro-kernel where there is one
        config["peak_gflops"] = config["micro_kernel_gflops"] or config["mm_gflops"]
        if config["micro_kernel_gflops"]:
            log(f"peak: the fused kernels' micro-kernel ({MICRO_SHAPE[0]} x {MICRO_SHAPE[1]} times {MICRO_SHAPE[1]} x "
                f"{MICRO_SHAPE[2]}, weights packed, in cache) on one thread x {threads} threads = "
                f"{config['micro_kernel_gflops']:.1f} GFLOP/s")
        log(f"{'reference' if config['micro_kernel_gflops'] else 'peak'}: torch.mm of 1024^3 float32 on one thread x "
            f"{threads} threads = {config['mm_gflops']:.1f} GFLOP/s")
    for spec in shapes:
        B, T, I, H = spec[:4]
        flags = spec[4] if len(spec) > 4 else ""
        stack, per_sample = "2bi" in flags, "ps" in flags
        x = torch.randn(T, B, I, requires_grad=True)
        if per_sample:  # irregular, per sequence: gaps drawn from an exponential of mean 1 step
            g = torch.Generator().manual_seed(0)
            times = torch.cumsum(torch.empty(B, T, dtype=torch.float64).exponential_(1.0, generator=g), 1)
        else:
            times = torch.arange(T, dtype=torch.float64)
        cases = [_Case("torch.nn.LSTM", _make("torch", I, H, "auto", stack), x, times)]
        for name in layers:
            cases.append(_Case(name, _make(name, I, H, "auto", stack), x, times))
            if reference:
                cases.append(_Case(name + " (reference)", _make(name, I, H, "reference", stack), x, times))
        if not stack:
            cases.append(_Bound(B, T, I, H))
        row = {"shape": [B, T, I, H], "per_sample_times": per_sample, "two_layer_bidirectional": stack,
               "forward_gflop": forward_flops(B, T, I, H, stack) / 1e9}
        for mode, fn in (("train", "train_step"), ("infer", "infer")):
            row[mode] = _median_ms(cases, fn, repeats, warmup)
        results.append(row)
        log(format_shape(row, config.get("peak_gflops")))
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
    sparse_rows, trained, stream_rows = [], None, []
    if sparse:
        hidden, steps = sparse if isinstance(sparse, tuple) else (SPARSE_HIDDEN, 1000)
        for H, B, shared, r_on in sparse_cases(hidden):
            sparse_rows.append(sparse_case(H, steps, B, shared, r_on))
        if run_dir is not None:
            trained = trained_case(run_dir)
        log(format_sparse(sparse_rows, trained))
    if stream:
        for H in (stream if isinstance(stream, tuple) else STREAM_SIZES):
            stream_rows.append(stream_latency(H))
        log(format_stream(stream_rows))
    return {"config": config, "results": results, "memory": mem, "sparse": sparse_rows, "trained": trained,
            "stream": stream_rows}


# -- inference of the Phased LSTM: dense against sparse ---------------------------------------------

SPARSE_HIDDEN = (128, 256, 512)


def sparse_cases(hidden=SPARSE_HIDDEN):
    """(H, B, shared, r_on) of the sparse section: B in {1, 32}, shared and per-sample, r_on 0.05, 0.2."""
    return [(H, B, shared, r_on) for H in hidden for B in (1, 32) for shared in (True, False) for r_on in (0.05, 0.2)]


def _irregular_times(B: int, T: int, shared: bool, generator: torch.Generator) -> torch.Tensor:
    gaps = torch.empty(1 if shared else B, T, dtype=torch.float64).exponential_(1.0, generator=generator)
    t = torch.cumsum(gaps, 1)
    return t[0] if shared else t


class _Mode:
    """One of the two modes of ``call(flag)`` (dense / sparse inference here; all / running rows in
    scripts/bench_lengths.py), as a case of _median_ms timing its ``run``."""

    def __init__(self, label, call, flag):
        self.label, self.call, self.flag = label, call, flag

    def run(self):
        self.call(self.flag)


def _dense_vs_sparse(call, repeats, warmup) -> dict[str, float]:
    """Median ms of call(False) and call(True), interleaved."""
    return _median_ms([_Mode("dense", call, False), _Mode("sparse", call, True)], "run", repeats, warmup)


def sparse_case(H, T, B, shared, r_on, repeats=5, warmup=1, I=1) -> dict:
    """ms of dense and sparse eval-mode inference of one Phased LSTM layer, and the open fraction."""
    from phasedlstm import PhasedLSTM

    g = torch.Generator().manual_seed(0)
    m = PhasedLSTM(I, H, r_on=r_on).eval()
    x = torch.randn(T, B, I, generator=g)
    times = _irregular_times(B, T, shared, g)

    def call(sparse):
        m.sparse_inference = sparse
        with torch.no_grad():
            m(x, times=times)

    ms = _dense_vs_sparse(call, repeats, warmup)
    call(True)
    return {"H": H, "T": T, "B": B, "shared": shared, "r_on": r_on, "dense_ms": ms["dense"],
            "sparse_ms": ms["sparse"], "open_fraction": m.last_open_fraction}


def trained_case(run_dir, repeats=5, warmup=1, batch_size=None) -> dict:
    """Dense against sparse over a trained run's test split (its whole model, batches of its size)."""
    from phasedlstm.train import load_run_model

    cfg, task, model, _ = load_run_model(run_dir)
    model.eval()
    rnn = model.rnn
    bs = batch_size or cfg.batch_size
    batches = list(task.test.batches(bs))

    def call(sparse):
        rnn.sparse_inference = sparse
        opened = valid = 0
        with torch.no_grad():
            for x, t, n, _ in batches:
                model(x, t, n)
                if sparse:
                    valid_units = int(n.sum()) * rnn.hidden_size
                    opened += rnn.last_open_fraction * valid_units
                    valid += valid_units
        return opened / valid if valid else None

    ms = _dense_vs_sparse(call, repeats, warmup)
    frac = call(True)
    r_on = rnn.open_ratios().detach()
    return {"run": str(run_dir), "task": cfg.task, "hidden_size": cfg.hidden_size, "batch_size": bs,
            "sequences": len(task.test), "max_steps": int(task.test.x.shape[1]), "dense_ms": ms["dense"],
            "sparse_ms": ms["sparse"], "open_fraction": frac, "r_on_median": float(r_on.median()),
            "r_on_range": [float(r_on.min()), float(r_on.max())]}


def format_sparse(rows, trained) -> str:
    lines = ["\nPhased LSTM inference, eval mode, no gradients: dense (every unit) against sparse (open units only)",
             f"  {'H':>4s} {'T':>5s} {'B':>3s} {'times':>10s} {'r_on':>5s}   {'dense ms':>9s} {'sparse ms':>9s} "
             f"{'speed-up':>8s} {'open':>6s}"]
    for r in rows:
        lines.append(f"  {r['H']:4d} {r['T']:5d} {r['B']:3d} {'shared' if r['shared'] else 'per-sample':>10s} "
                     f"{r['r_on']:5.2f}   {r['dense_ms']:9.1f} {r['sparse_ms']:9.1f} "
                     f"{r['dense_ms'] / r['sparse_ms']:7.1f}x {100 * r['open_fraction']:5.1f}%")
    if trained:
        t = trained
        lines.append(f"  trained: {t['run']} ({t['task']}, H={t['hidden_size']}, {t['sequences']} test sequences "
                     f"of up to {t['max_steps']} steps, batches of {t['batch_size']}; learned r_on median "
                     f"{t['r_on_median']:.3f}, range {t['r_on_range'][0]:.3f}-{t['r_on_range'][1]:.3f}):")
        lines.append(f"    dense {t['dense_ms']:.1f} ms, sparse {t['sparse_ms']:.1f} ms, "
                     f"{t['dense_ms'] / t['sparse_ms']:.1f}x, open {100 * t['open_fraction']:.1f}%")
    return "\n".join(lines)


# -- streaming: one step per call ------------------------------------------------------------------

STREAM_SIZES = (64, 128, 256)


def stream_latency(H, I=1, calls=500, repeats=7) -> dict:
    """Median µs per one-step call at B = 1 (blocks of ``calls`` calls, interleaved)."""
    from phasedlstm import LSTM, PeepholeLSTM, PhasedLSTM, Stream

    torch.manual_seed(0)
    x = torch.randn(1, 1, I)
    h, c = torch.zeros(1, 1, H), torch.zeros(1, 1, H)
    t = torch.tensor([[12.5]], dtype=torch.float64)
    ref = torch.nn.LSTM(I, H, batch_first=True).eval()
    ours = {name: cls(I, H, batch_first=True).eval() for name, cls in
            (("lstm", LSTM), ("peephole", PeepholeLSTM), ("phased", PhasedLSTM))}
    stream = Stream(PhasedLSTM(I, H, batch_first=True).eval())
    x_t = x[:, 0]
    clock = [0.0]

    def push():
        clock[0] += 1.0
        stream.push(x_t, clock[0])

    fns = {"torch.nn.LSTM": lambda: ref(x, (h, c)), **{k: (lambda m=m: m(x, (h, c), times=t)) for k, m in ours.items()},
           "Stream.push (phased)": push}
    samples = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            for _ in range(50):
                f()
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                samples[k].append(1e6 * (time.perf_counter() - t0) / calls)
    return {"H": H, "I": I, "us": {k: statistics.median(v) for k, v in samples.items()}}


def format_stream(rows) -> str:
    labels = list(rows[0]["us"])
    lines = ["\nstreaming: one step per call, B = 1, no gradients (median µs per call; ratio to torch.nn.LSTM)",
             "  " + f"{'H':>4s} " + " ".join(f"{k:>22s}" for k in labels)]
    for r in rows:
        base = r["us"]["torch.nn.LSTM"]
        lines.append("  " + f"{r['H']:4d} " + " ".join(f"{r['us'][k]:13.1f} ({r['us'][k] / base:4.2f}x)"
                                                      for k in labels))
    return "\n".join(lines)


def format_shape(row, peak=None) -> str:
    B, T, I, H = row["shape"]
    base_t, base_i = row["train"]["torch.nn.LSTM"], row["infer"]["torch.nn.LSTM"]
    bound_t, bound_i = row["train"].get("GEMM bound"), row["infer"].get("GEMM bound")
    what = (", per-sample timestamps" if row.get("per_sample_times") else "") + \
           (", 2-layer bidirectional" if row.get("two_layer_bidirectional") else "")
    gf = row.get("forward_gflop")
    lines = [f"\nB={B} T={T} I={I} H={H}{what}   (median ms; ratio to torch.nn.LSTM / to the GEMM bound; GFLOP/s "
             f"of the matrix products" + (f", peak {peak:.0f})" if peak else ")"),
             f"  {'layer':24s} {'train ms':>9s} {'x torch':>8s} {'x bound':>8s} {'GFLOP/s':>8s}   {'infer ms':>9s} "
             f"{'x torch':>8s} {'x bound':>8s} {'GFLOP/s':>8s}"]
    for label in row["train"]:
        t, i = row["train"][label], row["infer"][label]
        bt = f"{t / bound_t:8.2f}" if bound_t else f"{'-':>8s}"
        bi = f"{i / bound_i:8.2f}" if bound_i else f"{'-':>8s}"
        gt = f"{3 * gf / (t / 1000):8.1f}" if gf else f"{'':>8s}"
        gi = f"{gf / (i / 1000):8.1f}" if gf else f"{'':>8s}"
        lines.append(f"  {label:24s} {t:9.1f} {t / base_t:8.2f} {bt} {gt}   {i:9.1f} {i / base_i:8.2f} {bi} {gi}")
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
    """"B,T,I,H[,ps][,2bi];..." -> shape tuples (see SHAPES)."""
    if not s:
        return SHAPES
    out = []
    for part in (p.strip() for p in s.split(";")):
        if not part:
            continue
        items = [v.strip() for v in part.split(",")]
        flags = [v for v in items[4:] if v]
        try:
            nums = tuple(int(v) for v in items[:4])
        except ValueError:
            nums = ()
        if len(nums) != 4 or min(nums) < 1 or set(flags) - {"ps", "2bi"}:
            raise SystemExit(f"error: --shapes wants B,T,I,H[,ps][,2bi];... with positive integers (ps: per-sample "
                             f"timestamps, 2bi: 2-layer bidirectional), got {part!r}")
        out.append(nums + ((",".join(flags),) if flags else ()))
    return out


def _sizes(s: str, what: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 1:
        raise SystemExit(f"error: {what} wants positive integers separated by commas, got {s!r}")
    return v


def _write_json(path, out) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        print(f"written: {path}")


def main(args) -> int:
    layers = [v for v in args.layers.split(",") if v]
    unknown = sorted(set(layers) - set(LAYERS))
    if unknown:
        raise SystemExit(f"error: unknown layers {unknown}; choose from {LAYERS}")
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_model()}", flush=True)
    if args.grid:
        from phasedlstm.bench_grid import heat_map, run_grid

        if args.grid_points < 0 or not args.grid_max_gflop > 0:
            raise SystemExit("error: --grid-points wants an integer >= 0 and --grid-max-gflop a number > 0")
        out = run_grid(args.grid_points, args.grid_seed, args.grid_max_gflop, layers, args.threads,
                       args.repeats, args.warmup, log=lambda s: print(s, flush=True))
        if args.grid_plot:
            heat_map(out["rows"], layers, args.grid_plot)
            print(f"written: {args.grid_plot}")
        _write_json(args.json, out)
        return 0
    if args.events:
        from phasedlstm.bench_events import run_events

        torch.set_num_threads(args.threads)
        out = run_events(args.events, samples=max(1, args.events_samples), repeats=max(args.repeats, 1),
                         log=lambda s: print(s, flush=True))
        _write_json(args.json, out)
        return 0
    if args.deploy:
        from phasedlstm.bench_deploy import DEPLOY_LAYERS, run_deploy

        if args.deploy_steps < 1:
            raise SystemExit(f"error: --deploy-steps wants a positive integer, got {args.deploy_steps}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SystemExit('error: --deploy needs the optional extra: pip install "phasedlstm[export]"') from None
        batches = tuple(_sizes(args.deploy_batches, "--deploy-batches"))
        out = run_deploy([v for v in layers if v in DEPLOY_LAYERS], batches, args.deploy_steps, threads=args.threads,
                         repeats=max(args.repeats, 1), warmup=args.warmup, log=lambda s: print(s, flush=True))
        _write_json(args.json, out)
        return 0
    run_dir = args.run
    if run_dir is None:
        from pathlib import Path

        default = Path("results/models/freq-async-phased-seed0")
        run_dir = str(default) if (default / "config.json").exists() else None
    elif run_dir == "none":
        run_dir = None
    sparse_hidden = tuple(_sizes(args.sparse_hidden, "--sparse-hidden"))
    stream_hidden = tuple(_sizes(args.stream_hidden, "--stream-hidden"))
    if args.sparse_steps < 1:
        raise SystemExit(f"error: --sparse-steps wants a positive integer, got {args.sparse_steps}")
    out = run([] if args.no_shapes else parse_shapes(args.shapes), layers, args.threads, args.repeats, args.warmup,
              args.reference, not args.no_memory, log=lambda s: print(s, flush=True),
              sparse=False if args.no_sparse else (sparse_hidden, args.sparse_steps),
              stream=False if args.no_stream else stream_hidden, run_dir=run_dir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
