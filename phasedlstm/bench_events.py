"""``phasedlstm bench --events RUN``: how many events per second a trained event model (a Phased LSTM
run of ``nmnist-sim`` or ``nmnist``, its best.pt) takes on one stream at evaluation.

One test sample's events are fed in order, the state carried between calls, the readout applied
after the last: in chunks of K events per call (the address embedding and the layer over the
chunk, its timestamps continuing), and one event per ``Stream.push``. Sparse inference (only the
units whose time gate is open are computed) against dense (``sparse_inference = False``), median
of the repeats over the first ``samples`` test samples.
"""

from __future__ import annotations

import statistics
import time

import torch


def _chunked(model, x, times, chunk: int):
    """The model over one stream (x (1, T, F), times (1, T)) in chunks of ``chunk`` events -> logits."""
    rnn, hx = model.rnn, None
    T = x.shape[1]
    for start in range(0, T, chunk):
        z = model.inputs(x[:, start:start + chunk])
        out, hx = rnn(z, hx, times=times[:, start:start + chunk] / model.time_scale)
    return model.head(out[:, -1])


def run_events(run_dir, chunks=(1, 10, 100, 1000), samples: int = 20, repeats: int = 5, log=print) -> dict:
    from phasedlstm import Stream
    from phasedlstm.layers import PhasedLSTM
    from phasedlstm.train import load_run_model

    cfg, task, model, ck = load_run_model(run_dir)
    if not isinstance(model.rnn, PhasedLSTM) or not getattr(model, "embedding", 0):
        raise SystemExit(f"error: {run_dir} is not a Phased LSTM run on event streams (nmnist-sim or nmnist with "
                         f"--representation events)")
    model.eval()
    test = task.test
    streams = [test[torch.tensor([i])] for i in range(min(samples, len(test)))]
    events = sum(int(b.lengths[0]) for b in streams)
    rows = []
    log(f"{run_dir}: {len(streams)} test samples, {events} events, H={cfg.hidden_size}, "
        f"{torch.get_num_threads()} threads, median of {repeats}")
    log("| feeding | dense events/s | sparse events/s | sparse / dense |")
    log("|---|---|---|---|")

    def rate(fn):
        spent = []
        for i in range(repeats + 1):  # (the first: warm-up)
            t0 = time.perf_counter()
            with torch.no_grad():
                for b in streams:
                    n = int(b.lengths[0])
                    fn(b.x[:, :n], b.times[:, :n])
            if i:
                spent.append(time.perf_counter() - t0)
        return events / statistics.median(spent)

    def push_all(x, times):
        stream = Stream(model.rnn)
        z = model.inputs(x)[0]
        for k in range(x.shape[1]):
            h = stream.push(z[k], times[0, k] / model.time_scale)
        return model.head(h)

    feeds = [(f"chunks of {c}", lambda x, t, c=c: _chunked(model, x, t, c)) for c in chunks]
    feeds.append(("Stream.push, one event per call", push_all))
    for name, fn in feeds:
        r = {}
        for sparse in (False, True):
            model.rnn.sparse_inference = sparse
            r["sparse" if sparse else "dense"] = rate(fn)
        model.rnn.sparse_inference = True
        rows.append({"feeding": name, "dense_events_per_s": r["dense"], "sparse_events_per_s": r["sparse"]})
        log(f"| {name} | {r['dense']:,.0f} | {r['sparse']:,.0f} | {r['sparse'] / r['dense']:.2f} |")
    return {"run": str(run_dir), "samples": len(streams), "events": events, "threads": torch.get_num_threads(),
            "rows": rows}
