"""``phasedlstm bench --deploy``: a trained-shaped model exported to ONNX and run by ONNX Runtime,
against the same model in eager PyTorch (the fused kernels' inference path), one process, in
alternating blocks of calls, median of the repeats.

The model is the frequency task's: 2 input features (the signal and its timestamp), a 64-unit
projection, one layer of 110 units, the last step read out to 2 classes; ``T`` steps with random
timestamps and lengths from T/2 to T. A plain or peephole LSTM exports as ONNX's own LSTM operator,
the Phased LSTM and the LN-LSTM as their step equations inside ONNX's Scan (the input terms and the
time gate of all steps computed before it).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

DEPLOY_LAYERS = ("lstm", "peephole", "phased", "layernorm")


def _inputs(B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 2, generator=g)
    times = torch.rand(B, T, generator=g, dtype=torch.float64).mul(2.0).cumsum(1)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
    lengths[0] = T
    return x, times, lengths


def run_deploy(layers=DEPLOY_LAYERS, batches=(1, 32), T: int = 100, H: int = 110, threads: int = 2,
               repeats: int = 15, warmup: int = 3, log=print) -> dict:
    import onnxruntime as ort

    from phasedlstm.export import export
    from phasedlstm.models import SequenceModel

    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ONNX Runtime's threads otherwise spin after each call, taking the cores from PyTorch's next one
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rows = []
    log(f"ONNX Runtime {ort.__version__} against eager PyTorch (fused kernels), T={T}, H={H}, {threads} threads, "
        f"median of {repeats}")
    log("| layer | B | eager ms | ONNX Runtime ms | ONNX Runtime / eager |")
    log("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in layers:
            torch.manual_seed(0)
            model = SequenceModel(kind, 2, H, 2, proj_size=64, pooling="last").eval()
            path = Path(tmp) / f"{kind}.onnx"
            export(model, path, "onnx")
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for B in batches:
                x, times, lengths = _inputs(B, T, seed=B)
                feed = {"x": x.numpy(), "times": times.numpy(), "lengths": lengths.numpy()}

                def eager():
                    with torch.no_grad():
                        model(x, times, lengths)

                def onnx():
                    session.run(None, feed)

                spent = {"eager": [], "onnx": []}
                for _ in range(warmup):
                    eager(), onnx()
                # alternating blocks of calls, the first of each untimed: a slower moment of the machine
                # hits both, and neither runtime's threads wait in the other's calls
                block = 5
                for _ in range(max(1, -(-repeats // block))):
                    for name, fn in (("eager", eager), ("onnx", onnx)):
                        fn()
                        for _ in range(block):
                            t0 = time.perf_counter()
                            fn()
                            spent[name].append(time.perf_counter() - t0)
                e, o = (1e3 * statistics.median(spent[k]) for k in ("eager", "onnx"))
                rows.append({"layer": kind, "B": B, "T": T, "H": H, "eager_ms": e, "onnx_ms": o, "ratio": o / e})
                log(f"| {kind} | {B} | {e:.2f} | {o:.2f} | {o / e:.2f} |")
    return {"threads": threads, "T": T, "H": H, "rows": rows}
